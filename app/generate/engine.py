"""Continuous batching: sequences join and leave the running batch at every step.

One thread runs the steps. A request waits in a bounded queue until the KV cache can hold its
prompt and `max_tokens` (reserved on admission, so a running sequence never runs out), then
joins at the next step: its prompt is prefilled in chunks beside the running sequences' decode
tokens, so they keep getting tokens while a long prompt goes in. Every step is one forward with
many adapters, the plan mapping each row (a decode token, or a prefill chunk's tokens) to its
sequence's adapter. A sequence leaves when it stops, or at the next step after its client went.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import torch

from app.engine.predictor import Mode, Predictor
from app.errors import InvalidInput, QueueFull, ServiceUnavailable
from app.generate.detok import TextStream
from app.generate.forward import DecoderForward, Span, Step
from app.generate.sampling import Choice, SamplingParams, choose, new_generator
from app.lora import LinearFn, StackedBatch, merged_linear, plan_scope, unmerged_linear

log = logging.getLogger("app.generate")


@dataclass(frozen=True)
class GenEvent:
    """What one step gave a sequence: new text, its tokens, and why it ended (if it did)."""

    text: str
    tokens: tuple[Choice, ...]
    finish_reason: str | None = None  # "stop" or "length" on the last event


@dataclass
class _Sequence:
    prompt: list[int]
    version: str | None
    mode: Mode
    params: SamplingParams
    stream: TextStream
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[GenEvent | BaseException]
    enqueued: float
    slot: int = -1
    prefilled: int = 0  # prompt tokens already in the cache
    generated: int = 0
    last: int = -1  # the token the next decode step feeds
    cancelled: bool = False
    gen: torch.Generator = field(default_factory=torch.Generator)
    pending: list[Choice] = field(default_factory=list)

    @property
    def reserved(self) -> int:
        return len(self.prompt) + self.params.max_tokens

    def send(self, item: GenEvent | BaseException) -> None:
        self.loop.call_soon_threadsafe(self.out.put_nowait, item)


def _deliver(events: list[tuple[_Sequence, GenEvent]]) -> None:
    for seq, event in events:
        seq.out.put_nowait(event)


class GenerationEngine:
    """Generates for many sequences at once on a decoder base; one thread does the steps."""

    def __init__(
        self,
        predictor: Predictor,
        kv_cache_bytes: int,
        max_running_seqs: int,
        prefill_chunk_tokens: int,
        max_waiting_seqs: int,
        queue_timeout_s: float,
    ) -> None:
        base = predictor.base
        assert base.causal is not None, "generation needs a causal_lm base"
        self.predictor = predictor
        self.base = base
        self.info = base.causal
        self.forward = DecoderForward(base.module, self.info)
        self.cache = self.forward.new_cache(
            base.dtype, base.device, kv_cache_bytes, max_running_seqs, self.info.context_length
        )
        self.max_running = max_running_seqs
        self.chunk = prefill_chunk_tokens
        self.max_waiting = max_waiting_seqs
        self.queue_timeout_s = queue_timeout_s
        self._waiting: deque[_Sequence] = deque()
        self._running: list[_Sequence] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.steps = 0
        self.tokens_generated = 0
        self.tokens_prefilled = 0

    # -- the asyncio side ------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._running)

    def check_fits(self, prompt_tokens: int, max_tokens: int) -> None:
        """422 for a request the context or the whole KV cache could never hold."""
        total = prompt_tokens + max_tokens
        if total > self.info.context_length:
            raise InvalidInput(
                f"the prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) is "
                f"{total} tokens, over the model's context of {self.info.context_length}",
                "max_tokens",
            )
        capacity = self.cache.capacity_tokens()
        if total > capacity:
            raise InvalidInput(
                f"the prompt plus max_tokens needs {total} tokens of KV cache; this server's "
                f"KV_CACHE_BYTES holds at most {capacity} for one sequence",
                "max_tokens",
            )

    async def generate(
        self, prompt: list[int], version: str | None, params: SamplingParams, mode: Mode = "auto"
    ) -> AsyncIterator[GenEvent]:
        """Events of one sequence until it ends; closing the iterator frees it."""
        self.check_fits(len(prompt), params.max_tokens)
        loop = asyncio.get_running_loop()
        seq = _Sequence(
            prompt=prompt,
            version=version,
            mode=mode,
            params=params,
            stream=TextStream(self.info.tokenizer, params.stop),
            loop=loop,
            out=asyncio.Queue(),
            enqueued=time.monotonic(),
            gen=new_generator(params.seed),
        )
        with self._cond:
            if self._stopping:
                raise ServiceUnavailable("the server is shutting down")
            if len(self._waiting) >= self.max_waiting:
                raise QueueFull(
                    f"the generation queue is full ({len(self._waiting)} waiting); retry shortly"
                )
            self._waiting.append(seq)
            self._cond.notify()
        try:
            while True:
                item = await seq.out.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            seq.cancelled = True  # a client gone or done: freed at the next step

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="generate", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)

    # -- the engine thread -------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._waiting and not self._running:
                    self._cond.wait()
                if self._stopping:
                    break
                self._admit()
            if not self._running:
                time.sleep(0.005)  # waiting for room that only a timeout or a cancel can make
                continue
            try:
                self._step()
            except Exception as exc:  # one bad step fails its sequences, never the thread
                log.exception("generation step failed")
                for seq in self._running:
                    seq.send(ServiceUnavailable(f"generation failed: {exc}"))
                    self._release(seq)
                self._running = []
        for seq in [*self._running, *self._waiting]:
            seq.send(ServiceUnavailable("the server is shutting down"))

    def _admit(self) -> None:
        """Waiting sequences join, oldest first, while slots and cache bytes allow."""
        now = time.monotonic()
        while self._waiting:
            seq = self._waiting[0]
            if seq.cancelled:
                self._waiting.popleft()
                continue
            if len(self._running) < self.max_running and self.cache.fits(seq.reserved):
                self._waiting.popleft()
                seq.slot = self.cache.allocate(seq.reserved)
                self._running.append(seq)
                continue
            break
        for seq in list(self._waiting):  # bounded waits: never an unbounded queue
            if now - seq.enqueued > self.queue_timeout_s:
                self._waiting.remove(seq)
                seq.send(
                    QueueFull(
                        f"no room in the KV cache for {self.queue_timeout_s:g} s "
                        f"({len(self._running)} sequences running); retry shortly"
                    )
                )

    def _release(self, seq: _Sequence) -> None:
        if seq.slot >= 0:
            self.cache.release(seq.slot)
            seq.slot = -1

    def _step(self) -> None:
        gone = [s for s in self._running if s.cancelled]
        for seq in gone:
            self._release(seq)
        running = [s for s in self._running if not s.cancelled]
        self._running = running
        if not running:
            return
        decode = [s for s in running if s.prefilled == len(s.prompt)]
        budget = max(self.chunk, 1)
        ids: list[int] = [s.last for s in decode]
        positions: list[int] = [len(s.prompt) + s.generated - 1 for s in decode]
        keys: list[str | None] = [s.version for s in decode]
        spans: list[Span] = []
        prefilling: list[tuple[_Sequence, int]] = []
        for seq in running:
            if seq.prefilled == len(seq.prompt) or budget <= 0:
                continue
            n = min(budget, len(seq.prompt) - seq.prefilled)
            start = len(ids)
            ids += seq.prompt[seq.prefilled : seq.prefilled + n]
            positions += range(seq.prefilled, seq.prefilled + n)
            keys += [seq.version] * n
            spans.append(Span(start, start + n, seq.slot, seq.prefilled))
            prefilling.append((seq, n))
            budget -= n
        device = self.base.device
        step = Step(
            ids=torch.tensor(ids, dtype=torch.long, device=device),
            positions=torch.tensor(positions, dtype=torch.long, device=device),
            decode_slots=torch.tensor([s.slot for s in decode], dtype=torch.long, device=device),
            decode_lengths=torch.tensor(
                [p + 1 for p in positions[: len(decode)]], dtype=torch.long, device=device
            ),
            spans=tuple(spans),
        )
        # Rows whose next token is due: every decode row, and a prompt's last chunk's last row.
        sampled: list[tuple[_Sequence, int]] = [(s, i) for i, s in enumerate(decode)]
        for (seq, n), span in zip(prefilling, spans, strict=True):
            seq.prefilled += n
            self.tokens_prefilled += n
            if seq.prefilled == len(seq.prompt):
                sampled.append((seq, span.stop - 1))
        with torch.inference_mode():
            with plan_scope(self._plan(keys, running)):
                hidden = self.forward.hidden(step, self.cache)
            rows = torch.tensor([r for _, r in sampled], dtype=torch.long, device=device)
            logits = self.forward.logits(hidden.index_select(0, rows)).cpu() if sampled else None
        self.steps += 1
        # A step's events go to each event loop in one wake-up, not one per sequence: every
        # wake-up takes the GIL from this thread between two of its ops.
        events: dict[asyncio.AbstractEventLoop, list[tuple[_Sequence, GenEvent]]] = {}
        for j, (seq, _) in enumerate(sampled):
            assert logits is not None
            event = self._advance(seq, logits[j])
            if event is not None:
                events.setdefault(seq.loop, []).append((seq, event))
        for loop, batch in events.items():
            loop.call_soon_threadsafe(_deliver, batch)
        self._running = [s for s in self._running if s.slot >= 0]

    def _plan(self, keys: list[str | None], running: list[_Sequence]) -> LinearFn | None:
        """The step's plan: base alone, one adapter (merged where it pays), or per row."""
        versions = set(keys)
        if versions == {None}:
            return None
        loaded = self.predictor.resolve(versions, "model")
        if len(versions) == 1:
            (version,) = versions
            assert version is not None
            modes = {s.mode for s in running}
            # The whole batch on one adapter: its merged copy costs nothing per token.
            wanted = "merged" in modes or self.predictor.is_merged(version) or len(running) > 1
            if "unmerged" not in modes and wanted and self.predictor.merge(version, "model"):
                weights = self.predictor.merged.get_or_merge(version, loaded[version][1])
                return merged_linear(weights)
            return unmerged_linear(loaded[version][1])
        stack = self.predictor.stack_for({v: a for v, (_, a) in loaded.items()})
        return StackedBatch.build(keys, stack, self.base.device).linear()

    def _advance(self, seq: _Sequence, logits: torch.Tensor) -> GenEvent | None:
        """Sample the sequence's next token and end it if it is done; the event to send."""
        params = seq.params
        choice = choose(logits, params, seq.gen)
        seq.generated += 1
        seq.last = choice.token
        self.tokens_generated += 1
        eos = choice.token in params.stop_token_ids or (
            not params.ignore_eos and choice.token in self.info.eos_token_ids
        )
        finish: str | None = None
        if eos:
            text = seq.stream.finish()
            finish = "stop"
        else:
            text = seq.stream.push(choice.token)
            if seq.stream.stopped:
                finish = "stop"
            elif seq.generated >= params.max_tokens:
                text += seq.stream.finish()
                finish = "stop" if seq.stream.stopped else "length"
        seq.pending.append(choice)
        event = None
        if text or finish is not None:
            event = GenEvent(text, tuple(seq.pending), finish)
            seq.pending = []
        if finish is not None:
            self._release(seq)
        return event
