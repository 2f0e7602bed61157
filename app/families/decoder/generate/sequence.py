"""One sequence in the generation engine: its state, its sampling step, its events' way out."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from app.engine.predictor import Mode
from app.families.decoder.generate.cache import BlockTable
from app.families.decoder.generate.detok import TextStream
from app.families.decoder.generate.sampling import Choice, SamplingParams, choose
from app.families.decoder.generate.waiting import RequestGroup


@dataclass(frozen=True)
class GenEvent:
    """What one step gave a sequence: new text, its tokens, and why it ended (if it did)."""

    text: str
    tokens: tuple[Choice, ...]
    finish_reason: str | None = None  # "stop" or "length" on the last event


@dataclass(eq=False)
class Sequence:
    prompt: list[int]
    version: str | None
    mode: Mode
    params: SamplingParams
    stream: TextStream
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[GenEvent | BaseException]
    group: RequestGroup[Sequence]
    gen: torch.Generator
    request_id: str | None = None  # for the log, when something fails
    table: BlockTable | None = None  # its KV cache blocks while it runs
    tokens: list[int] = field(default_factory=list)  # the prompt, then each token generated
    generated: int = 0
    cancelled: bool = False
    finished: bool = False
    pending: list[Choice] = field(default_factory=list)
    matcher: Any = None  # its constraint's state (generate/grammar.py); None: free text

    def __post_init__(self) -> None:
        self.tokens = list(self.prompt)

    def send(self, item: GenEvent | BaseException) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody left to read it
            self.loop.call_soon_threadsafe(self.out.put_nowait, item)

    def advance(
        self, logits: torch.Tensor, eos_token_ids: frozenset[int], argmax: int | None = None
    ) -> GenEvent | None:
        """Sample the next token from (vocab,) logits (whose argmax the caller may know),
        ending the sequence if it is done; the event to send (None while the text is held back)."""
        params = self.params
        choice = choose(logits, params, self.gen, argmax)
        self.generated += 1
        self.tokens.append(choice.token)
        eos = choice.token in params.stop_token_ids or (
            not params.ignore_eos and choice.token in eos_token_ids
        )
        if self.matcher is not None:
            # The logits were masked to what the constraint allows: the token is one of them.
            # A complete answer ends the sequence (its stop token, which the mask then allows
            # alone), whatever ignore_eos says.
            self.matcher.accept_token(choice.token)
            eos = eos or self.matcher.is_terminated()
        finish: str | None = None
        if eos:
            text = self.stream.finish()
            finish = "stop"
        else:
            text = self.stream.push(choice.token)
            if self.stream.stopped:
                finish = "stop"
            elif self.generated >= params.max_tokens:
                text += self.stream.finish()
                finish = "stop" if self.stream.stopped else "length"
        self.pending.append(choice)
        event = None
        if text or finish is not None:
            event = GenEvent(text, tuple(self.pending), finish)
            self.pending = []
        self.finished = finish is not None
        return event


class SequenceEvents:
    """One sequence's events, until the last; `close()` frees it, read or not, at any time."""

    def __init__(self, seq: Sequence, cancel: Callable[[Sequence], None]) -> None:
        self._seq = seq
        self._cancel = cancel
        self._done = False

    def __aiter__(self) -> SequenceEvents:
        return self

    async def __anext__(self) -> GenEvent:
        if self._done:
            raise StopAsyncIteration
        try:
            item = await self._seq.out.get()
        except BaseException:
            self.close()
            raise
        if isinstance(item, BaseException):
            self.close()
            raise item
        if item.finish_reason is not None:
            self.close()
        return item

    def close(self) -> None:
        if not self._done:
            self._done = True
            self._cancel(self._seq)


def deliver(events: list[tuple[Sequence, GenEvent]]) -> None:
    """Put a step's events in their queues (on their event loop, in one wake-up)."""
    for seq, event in events:
        seq.out.put_nowait(event)
