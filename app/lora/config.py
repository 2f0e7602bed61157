"""LoRA hyperparameters with PEFT's per-module overrides (rank_pattern, alpha_pattern)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import re2

# Adapter configs carry regexes from tenants, matched against every module name of the base:
# Python's backtracking `re` can take hours on `(.|.|.)*!` while holding the GIL, so they go
# through RE2 (linear in the text). The length cap and a small program budget bound the compile.
MAX_PATTERN_CHARS = 512
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a refused pattern is the caller's 422, not a log line
_RE2_OPTIONS.max_mem = 1 << 20  # PEFT's patterns are tiny; `(.{0,999}a)|...` compiles in ms


class PatternError(ValueError):
    """A pattern this service will not run: too long, or outside RE2's linear-time syntax."""


@functools.lru_cache(maxsize=256)
def compile_pattern(pattern: str) -> re2._Regexp:
    """`pattern` compiled by RE2; PatternError if too long or not RE2 (backreferences, lookarounds)."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise PatternError(f"is {len(pattern)} characters, over the limit of {MAX_PATTERN_CHARS}")
    try:
        return re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else ""
        if isinstance(reason, bytes):
            reason = reason.decode(errors="replace")
        raise PatternError(f"is not a regular expression RE2 accepts: {reason}") from exc


def suffix_pattern(key: str) -> re2._Regexp:
    """PEFT's rule for a rank_pattern/alpha_pattern key: it matches a dotted suffix of the name."""
    if len(key) > MAX_PATTERN_CHARS:  # checked on the key, as the tenant wrote it
        raise PatternError(f"is {len(key)} characters, over the limit of {MAX_PATTERN_CHARS}")
    # The exact string PEFT builds, used with match (anchored at the start only), as PEFT does.
    return compile_pattern(rf"(.*\.)?({key})$")


def pattern_key(patterns: dict[str, int] | dict[str, float], module: str) -> str | None:
    """PEFT's rule: the first pattern key that matches a dotted suffix of the module name."""
    for key in patterns:
        if suffix_pattern(key).match(module):
            return key
    return None


def lora_scaling(alpha: float, r: int, use_rslora: bool) -> float:
    """alpha / r, or alpha / sqrt(r) with rsLoRA (Kalajdzievski, 2023)."""
    return alpha / math.sqrt(r) if use_rslora else alpha / r


@dataclass(frozen=True)
class LoraConfig:
    """The fields of PEFT's LoraConfig that change the math; target_modules is the exact list."""

    r: int
    lora_alpha: float
    target_modules: tuple[str, ...]
    use_rslora: bool = False
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)

    def rank_for(self, module: str) -> int:
        key = pattern_key(self.rank_pattern, module)
        return self.r if key is None else self.rank_pattern[key]

    def alpha_for(self, module: str) -> float:
        key = pattern_key(self.alpha_pattern, module)
        return self.lora_alpha if key is None else self.alpha_pattern[key]

    def scaling_for(self, module: str) -> float:
        return lora_scaling(self.alpha_for(module), self.rank_for(module), self.use_rslora)
