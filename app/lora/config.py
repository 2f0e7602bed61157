"""LoRA hyperparameters with PEFT's per-module overrides (rank_pattern, alpha_pattern)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field


def pattern_key(patterns: dict[str, int] | dict[str, float], module: str) -> str | None:
    """PEFT's rule: the first pattern key that matches a dotted suffix of the module name."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
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
