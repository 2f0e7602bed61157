"""Continuous batching: sequences join and leave the running batch at every step.

One thread runs the steps. A request waits in a bounded queue until the paged KV cache has
free blocks for its prompt (less what the prefix cache holds already), then joins at the next
step: its prompt is prefilled in chunks beside the running sequences' decode tokens, so they
keep getting tokens while a long prompt goes in. A sequence takes a block each time its tokens
fill one; when none is free, the sequence that joined last is preempted and computed again
later from its tokens (as vLLM does), so it goes on with the same tokens. Every step is one forward with
many adapters, the plan mapping each row (a decode token, or a prefill chunk's tokens) to its
sequence's adapter. A sequence leaves when it stops, or at the next step after its client went.
Which waiting sequence joins next is fair between projects and requests (app.families.decoder.generate.waiting).

Failures stay where they happen: a sequence whose sampling fails ends alone; a step that fails
ends the step's sequences. Clients hear a generic message; the log has the cause and the
request ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator

import torch

from app.engine.predictor import Mode, Predictor
from app.errors import QueueFull, ServiceUnavailable
from app.families.decoder.generate.detok import TextStream
from app.families.decoder.generate.forward import DecoderForward, Step
from app.families.decoder.generate.grammar import Grammars
from app.families.decoder.generate.limits import RequestLimits
from app.families.decoder.generate.plan import StepPlans
from app.families.decoder.generate.rows import blocks_for_decode, open_blocks, step_rows, table
from app.families.decoder.generate.sampling import GREEDY_BELOW, SamplingParams, new_generator
from app.families.decoder.generate.sequence import GenEvent, Sequence, SequenceEvents, deliver
from app.families.decoder.generate.waiting import RequestGroup, WaitingRoom
from app.families.decoder.model import CausalInfo
from app.lora import plan_scope
from app.lora.gather import take_rows

__all__ = ["GenEvent", "GenerationEngine", "SequenceEvents"]
log = logging.getLogger("app.families.decoder.generate")
# What a client hears when its sequence fails inside the engine (the log has the cause).
_FAILED = "generation failed on the server; it logged why under this request's id"


class GenerationEngine:
    """Generates for many sequences at once on a decoder base; one thread does the steps."""

    def __init__(
        self,
        predictor: Predictor,
        info: CausalInfo,
        kv_cache_bytes: int,
        max_running_seqs: int,
        prefill_chunk_tokens: int,
        max_waiting_seqs: int,
        queue_timeout_s: float,
        max_seqs_per_request: int = 64,
        kv_block_tokens: int = 16,
        prefix_caching: bool = True,
        pack_weights: bool = False,
    ) -> None:
        base = predictor.base
        self.predictor = predictor
        self.base = base
        self.info = info
        self.forward = DecoderForward(base.module, self.info, pack_weights)
        self.plans = StepPlans(predictor)
        self.cache = self.forward.new_cache(
            base.dtype, base.device, kv_cache_bytes, kv_block_tokens, self.info.context_length,
            prefix_caching,
        )  # fmt: skip
        self.max_running = max_running_seqs
        self.chunk = prefill_chunk_tokens
        self.max_waiting = max_waiting_seqs
        self.limits = RequestLimits(
            self.info.context_length,
            self.cache,
            min(max_seqs_per_request, max_waiting_seqs),
            max((len(t) for t in self.info.tokenizer.get_vocab()), default=1),
        )
        self.queue_timeout_s = queue_timeout_s
        self.grammars = Grammars(info.tokenizer, info.vocab_size, info.eos_token_ids)
        self._room: WaitingRoom[Sequence] = WaitingRoom(max_waiting_seqs)
        self._running: list[Sequence] = []  # in the order they joined
        self._preempted: deque[Sequence] = deque()  # out of blocks: they join again first
        self.preemptions = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.steps = 0
        self.tokens_generated = 0
        self.tokens_prefilled = 0

    # -- the asyncio side ------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        return self._room.size

    @property
    def running(self) -> int:
        return len(self._running)

    def submit(
        self,
        prompts: list[tuple[list[int], SamplingParams]],
        version: str | None,
        mode: Mode = "auto",
        project: str = "",
        request_id: str | None = None,
    ) -> list[SequenceEvents]:
        """Queue one request's sequences, all or none; each one's events until it ends."""
        # The routes check in `prepare` already, naming their own field; this is the engine's
        # own guard for every other caller (a few comparisons per sequence).
        self.limits.check_request([(len(p), params.max_tokens) for p, params in prompts])
        loop = asyncio.get_running_loop()
        group: RequestGroup[Sequence] = RequestGroup(project, deque())
        for prompt, params in prompts:
            seq = Sequence(
                prompt=prompt,
                version=version,
                mode=mode,
                params=params,
                stream=TextStream(self.info.tokenizer, params.stop),
                loop=loop,
                out=asyncio.Queue(),
                group=group,
                request_id=request_id,
                gen=new_generator(params.seed),
                matcher=None
                if params.grammar is None
                else self.grammars.matcher(params.grammar, params.json_grammar),
            )
            group.waiting.append(seq)
        with self._cond:
            if self._stopping:
                raise ServiceUnavailable("the server is shutting down")
            if not self._room.room_for(project, len(group.waiting)):
                raise QueueFull(
                    f"the generation queue is full ({self._room.size} sequences waiting); "
                    "retry shortly"
                )
            self._room.add(group)
            self._cond.notify()
        return [SequenceEvents(seq, self._cancel) for seq in group.waiting]

    async def generate(
        self, prompt: list[int], version: str | None, params: SamplingParams, mode: Mode = "auto"
    ) -> AsyncIterator[GenEvent]:
        """One sequence's events until it ends (a request of one); closing it frees it."""
        (events,) = self.submit([(prompt, params)], version, mode)
        try:
            async for event in events:
                yield event
        finally:
            events.close()

    def _cancel(self, seq: Sequence) -> None:
        """A client gone or done: a waiting sequence leaves now, a running one at the next step."""
        seq.cancelled = True
        with self._cond:
            self._room.discard(seq, seq.group)

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
                while not (self._stopping or self._room.size or self._running or self._preempted):
                    self._cond.wait()
                if self._stopping:
                    break
                self._admit()
            if not self._running:
                time.sleep(0.005)  # waiting for room that only a timeout or a cancel can make
                continue
            try:
                self._step()
            except Exception:  # one bad step fails its sequences, never the thread
                ids = sorted({s.request_id or "-" for s in self._running})
                log.exception("generation step failed; requests %s", ", ".join(ids))
                for seq in self._running:
                    seq.send(ServiceUnavailable(_FAILED))
                    self._release(seq)
                self._running = []
        with self._cond:
            waiting = self._room.drain()
        for seq in [*self._running, *self._preempted, *waiting]:
            seq.send(ServiceUnavailable("the server is shutting down"))

    def _admit(self) -> None:
        """Preempted sequences first, then waiting ones, the fairest first, while there are
        places in the batch and free blocks for their prompts (what the prefix cache holds
        already is not computed again)."""
        while len(self._running) < self.max_running:
            if self._preempted and self._preempted[0].cancelled:  # its client left meanwhile
                self._room.finished(self._preempted.popleft().group)
                continue
            if self._preempted:
                seq, group = self._preempted[0], None
            elif (head := self._room.peek()) is not None:
                seq, group = head
            else:
                break
            if not open_blocks(self.cache, seq, spare=bool(self._running)):
                break  # the first in line waits for blocks: skipping it could starve it
            if group is None:
                self._preempted.popleft()
            else:
                self._room.pop(seq, group)
                self.tokens_prefilled += len(seq.prompt)  # as vLLM counts: cached ones too
            self._running.append(seq)
        # Bounded waits: a request none of whose sequences could join in time hears so.
        for seq in self._room.expired(time.monotonic(), self.queue_timeout_s):
            seq.send(
                QueueFull(
                    f"no room in the KV cache for {self.queue_timeout_s:g} s "
                    f"({len(self._running)} sequences running); retry shortly"
                )
            )

    def _release(self, seq: Sequence) -> None:
        if seq.table is not None:
            self.cache.close(seq.table)
            seq.table = None
            with self._cond:
                self._room.finished(seq.group)

    def _preempt(self, seq: Sequence) -> None:
        """Out of blocks: `seq` gives its blocks back and is computed again when there is room
        (from its prompt and the tokens it has, so it goes on with the same tokens)."""
        assert seq.table is not None
        self.cache.close(seq.table)
        seq.table = None
        self._running.remove(seq)
        self._preempted.append(seq)
        self.preemptions += 1

    def _step(self) -> None:
        for seq in [s for s in self._running if s.cancelled]:
            self._release(seq)
        self._running = [s for s in self._running if not s.cancelled]
        blocks_for_decode(self.cache, self._running, self._preempt)
        running = self._running
        if not running:
            return
        rows = step_rows(running, self.chunk)
        device = self.base.device
        step = Step.build(
            rows.ids, rows.positions, rows.tables, rows.spans, self.cache.block_tokens,
            self.forward.group, device,
        )  # fmt: skip
        sampled = rows.sampled
        with torch.inference_mode():
            plan = self.plans.plan(rows.keys, {s.mode for s in running}, len(running))
            with plan_scope(plan):
                hidden = self.forward.hidden(step, self.cache)
            index = torch.tensor([r for _, r in sampled], dtype=torch.long, device=device)
            logits = self.forward.logits(take_rows(hidden, index)).cpu() if sampled else None
        self.steps += 1
        for seq, upto in rows.computed:
            self.cache.computed(table(seq), seq.tokens, upto)
        self._sample(sampled, logits)
        self._running = [s for s in self._running if s.table is not None]

    def _sample(self, sampled: list[tuple[Sequence, int]], logits: torch.Tensor | None) -> None:
        # One wake-up per event loop, not per sequence: each takes the GIL from this thread.
        events: dict[asyncio.AbstractEventLoop, list[tuple[Sequence, GenEvent]]] = {}
        constrained = [(j, s.matcher) for j, (s, _) in enumerate(sampled) if s.matcher is not None]
        if constrained and logits is not None:  # before the argmax: it picks among the allowed
            self.grammars.apply(logits, [j for j, _ in constrained], [m for _, m in constrained])
        # The greedy rows' argmax in one op (0.42 ms for 16 rows, not 0.86); none if none is.
        argmax: list[int | None] = [None] * len(sampled)
        if logits is not None and any(s.params.temperature < GREEDY_BELOW for s, _ in sampled):
            argmax = logits.argmax(-1).tolist()
        for j, (seq, _) in enumerate(sampled):
            assert logits is not None
            try:
                event = seq.advance(logits[j], self.info.eos_token_ids, argmax[j])
                self.tokens_generated += 1
                if seq.finished:
                    self._release(seq)
            except Exception:  # this sequence's sampling alone: the others go on
                log.exception("sampling failed; request %s", seq.request_id or "-")
                seq.send(ServiceUnavailable(_FAILED))
                self._release(seq)
                continue
            if event is not None:
                events.setdefault(seq.loop, []).append((seq, event))
        for loop, batch in events.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody left to read them
                loop.call_soon_threadsafe(deliver, batch)
