"""Constrained decoding with xgrammar: constraints compiled against the base's tokenizer (and
kept: the compiler caches by constraint), one matcher per sequence, and each step's token
bitmasks applied to the constrained rows' logits before sampling.

xgrammar rather than llguidance (bench/grammar_libs.py, bench/results/grammar-libs-cpu.json, on
SmolLM2's 49,152 tokens): a mask for the next token takes 7 us at the median and 60 us at p99
against llguidance's 62 us and 2.6 ms (a step waits for its slowest sequence's mask); its view of
the tokenizer is built in 0.3 s against 2.6 s. llguidance reaches a new schema's first mask
sooner (1.4 ms against 9.5 ms), which a compile off the engine's thread and a cache absorb.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from typing import Any

import torch

from app.errors import InvalidInput
from app.families.decoder.constraints import Constraint

# xgrammar's errors start with a time and a source location: the message is what follows.
_LOCATION = re.compile(r"^\[[\d:]+\] \S+:\d+: ")


@dataclass(frozen=True)
class Matcher:
    """One sequence's place in its constraint."""

    state: Any  # an xgrammar GrammarMatcher
    json: bool  # a JSON constraint: no raw control characters (JSON strings escape them)

    def accept_token(self, token: int) -> None:
        self.state.accept_token(token)

    def is_terminated(self) -> bool:
        return bool(self.state.is_terminated())


class Grammars:
    """One base's compiler of constraints; safe to call from any thread."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: frozenset[int]) -> None:
        self._tokenizer, self.vocab_size = tokenizer, vocab_size
        self._stops = sorted(stop_token_ids)
        self._compiler: Any = None
        self._printable: torch.Tensor | None = None  # bitmask row: tokens free of controls
        self._lock = threading.Lock()

    def compile(self, constraint: Constraint) -> Any:
        """The constraint's compiled grammar (made once, then from the cache); a constraint the
        library cannot compile is a 422 naming its field."""
        compiler = self._ready()
        try:
            if constraint.kind == "json_schema":
                # Compact JSON with the usual ", " and ": ": a model cannot pad it forever.
                return compiler.compile_json_schema(constraint.text, any_whitespace=False)
            if constraint.kind == "json_object":  # OpenAI's: an object, any keys and values
                return compiler.compile_json_schema(
                    '{"type": "object"}', any_whitespace=False, strict_mode=False
                )
            if constraint.kind == "regex":
                return compiler.compile_regex(constraint.text)
            if constraint.kind == "choice":
                choices = json.loads(constraint.text)
                return compiler.compile_grammar("root ::= " + " | ".join(map(json.dumps, choices)))
            return compiler.compile_grammar(constraint.text)
        except Exception as exc:  # xgrammar's refusal of what the client wrote: a 422, not a 500
            message = _LOCATION.sub(
                "", str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            )
            raise InvalidInput(
                f"cannot compile this {constraint.kind}: {message}", constraint.param
            ) from None

    def matcher(self, compiled: Any, json_kind: bool) -> Matcher:
        import xgrammar as xgr

        return Matcher(xgr.GrammarMatcher(compiled), json_kind)

    def apply(self, logits: torch.Tensor, rows: list[int], matchers: list[Matcher]) -> None:
        """Mask `logits[rows[i]]` (in place) to the tokens `matchers[i]` allows next."""
        import xgrammar as xgr

        mask = xgr.allocate_token_bitmask(len(rows), self.vocab_size)
        for i, matcher in enumerate(matchers):
            matcher.state.fill_next_token_bitmask(mask, i)
            if matcher.json and self._printable is not None:
                # xgrammar's JSON strings let raw control characters through, which no strict
                # JSON parser takes (json.loads among them): those tokens are masked out too.
                mask[i] &= self._printable
        index = torch.tensor(rows, dtype=torch.long)
        with torch.inference_mode():  # the step's logits were made in it
            constrained = logits[index]
            xgr.apply_token_bitmask_inplace(constrained, mask, vocab_size=self.vocab_size)
            logits[index] = constrained

    def _ready(self) -> Any:
        with self._lock:  # the tokenizer's view is built once (0.3 s for 49k tokens), lazily
            if self._compiler is None:
                import xgrammar as xgr

                info = xgr.TokenizerInfo.from_huggingface(
                    self._tokenizer, vocab_size=self.vocab_size, stop_token_ids=self._stops
                )
                self._compiler = xgr.GrammarCompiler(info, max_threads=1)
                self._printable = _printable(self._tokenizer, self.vocab_size)
            return self._compiler


def _printable(tokenizer: Any, vocab_size: int) -> torch.Tensor:
    """A bitmask row (xgrammar's layout: bit t of word t // 32) of the tokens whose text has no
    character below U+0020."""
    ok = torch.zeros(vocab_size, dtype=torch.bool)
    for token in range(min(vocab_size, len(tokenizer))):
        text = tokenizer.decode([token])
        ok[token] = not any(ord(ch) < 0x20 for ch in text)
    padded = torch.zeros(-(-vocab_size // 32) * 32, dtype=torch.int64)
    padded[:vocab_size] = ok.to(torch.int64)
    words = (padded.view(-1, 32) << torch.arange(32)).sum(dim=1)
    return words.to(torch.int64).bitwise_and(0xFFFFFFFF).to(torch.int32)
