"""Choosing each sequence's next token: greedy, temperature, top-k, top-p, seeded; logprobs."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

# Temperatures below this are greedy, as vLLM does: dividing the logits by a smaller one can
# overflow them to inf, and the softmax to NaN, while the choice it meant is the argmax anyway.
GREEDY_BELOW = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    """One sequence's sampling and stopping rules (OpenAI's fields, vLLM's defaults)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: no top-k cut
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    logprobs: int | None = None  # None: none; k: the chosen token's and the k most likely
    ignore_eos: bool = False  # vLLM's extension: generate max_tokens whatever the model says
    grammar: Any = None  # a compiled constraint (generate/grammar.py): each sequence its matcher
    json_grammar: bool = False  # the constraint is JSON (a schema, or any object)


@dataclass(frozen=True)
class Choice:
    """The token picked for one sequence, with its logprob and the top alternatives."""

    token: int
    logprob: float | None = None
    top: tuple[tuple[int, float], ...] = field(default_factory=tuple)


def new_generator(seed: int | None) -> torch.Generator:
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


def choose(
    logits: Tensor, params: SamplingParams, gen: torch.Generator, argmax: int | None = None
) -> Choice:
    """Pick from (vocab,) float32 logits; logprobs are the model's own (before temperature).
    `argmax`: the logits' argmax when the caller has it (one op for a whole step's rows)."""
    if params.temperature < GREEDY_BELOW:
        token = int(logits.argmax()) if argmax is None else argmax
    else:
        scores = logits / params.temperature
        if params.top_k > 0 and params.top_k < scores.shape[0]:
            kth = torch.topk(scores, params.top_k).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if params.top_p < 1.0:
            sorted_scores, order = torch.sort(scores, descending=True)
            probs = sorted_scores.softmax(-1)
            # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
            drop = probs.cumsum(-1) - probs >= params.top_p
            scores = scores.index_fill(0, order[drop], float("-inf"))
        probs = scores.softmax(-1)
        token = int(torch.multinomial(probs, 1, generator=gen))
    if params.logprobs is None:
        return Choice(token)
    logp = logits.log_softmax(-1)
    top: tuple[tuple[int, float], ...] = ()
    if params.logprobs > 0:
        values, ids = torch.topk(logp, params.logprobs)
        # Tokens a constraint rules out (-inf) are no alternatives: fewer than k are listed.
        top = tuple(
            (i, v) for i, v in zip(ids.tolist(), values.tolist(), strict=True) if v > -math.inf
        )
    return Choice(token, float(logp[token]), top)
