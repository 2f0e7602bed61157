"""Dynamic batching: concurrent requests join one queue, served by one inference thread.

Rows from different requests and adapters are batched together, up to `max_batch_rows`, waiting
at most `batch_wait_ms` after the oldest request arrived (and not at all under light load: a lone
request after a lone batch runs at once); each request gets exactly its own rows back. The
queue is bounded in rows; a full queue answers 503 at once. The event loop only enqueues and
awaits: all model work, merges included, happens on the compute thread (app/engine/compute.py).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter, deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import Tensor

from app.engine.compute import ComputeThread
from app.engine.interface import OnBatch, Result, queue_full
from app.engine.predictor import Loaded, Mode, Predictor
from app.errors import ServiceError
from app.model import Rows, TokenBatch

log = logging.getLogger(__name__)


@dataclass
class _Request:
    x: Rows  # n rows: vectors (n, in) or n tokenized texts
    names: list[str | None]
    mode: Mode
    param: str
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Result]
    enqueued: float = field(default_factory=time.perf_counter)
    loaded: Loaded = field(default_factory=dict)


def _deliver(future: asyncio.Future[Result], value: Result | BaseException) -> None:
    if future.done():  # the client went away
        return
    if isinstance(value, BaseException):
        future.set_exception(value)
    else:
        future.set_result(value)


class Batcher:
    """One queue for the device, served by the compute thread."""

    def __init__(
        self,
        predictor: Predictor,
        compute: ComputeThread,
        on_batch: OnBatch,
        max_batch_rows: int,
        batch_wait_ms: float,
        max_queue_rows: int,
    ) -> None:
        self.predictor = predictor
        self.compute = compute
        self.on_batch = on_batch
        self.max_batch_rows = max_batch_rows
        self.batch_wait_s = batch_wait_ms / 1000
        self.max_queue_rows = max_queue_rows
        self._queue: deque[_Request] = deque()
        self._queued_rows = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._last_batch = 0  # requests in the last batch
        self._running: Future[None] | None = None

    def start(self) -> None:
        # The loop holds the compute thread until stop(): nothing else is queued behind it.
        self._running = self.compute.submit(self._loop)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._running is not None:
            self._running.result(timeout=10)

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    async def submit(self, x: Rows, names: list[str | None], mode: Mode, param: str) -> Result:
        loop = asyncio.get_running_loop()
        request = _Request(x, names, mode, param, loop, loop.create_future())
        with self._cond:
            if self._queued_rows + len(x) > self.max_queue_rows:
                raise queue_full(self._queued_rows)
            self._queue.append(request)
            self._queued_rows += len(x)
            self._cond.notify()
        return await request.future

    def _take(self) -> tuple[list[_Request], list[str]] | None:
        """Wait for work, then for company, then take up to a full batch (FIFO), and name the
        adapters worth merging first."""
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            # Waiting for company only pays when company has been coming: a lone request after a
            # lone batch (light load) runs at once instead of paying the wait as latency.
            wait = self.batch_wait_s if self._last_batch > 1 or len(self._queue) > 1 else 0.0
            deadline = self._queue[0].enqueued + wait
            while self._queued_rows < self.max_batch_rows and not self._stopping:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._cond.wait(left)
            taken: list[_Request] = []
            rows = 0
            while self._queue and (
                not taken or rows + len(self._queue[0].x) <= self.max_batch_rows
            ):
                request = self._queue.popleft()
                taken.append(request)
                rows += len(request.x)
            self._queued_rows -= rows
            self._last_batch = len(taken)
            backlog: Counter[str] = Counter()
            for request in (*taken, *self._queue):
                if request.mode == "auto":
                    backlog.update(n for n in request.names if n is not None)
            return taken, self.predictor.merges_due(backlog, self.max_batch_rows)

    def _loop(self) -> None:
        while True:
            work = self._take()
            if work is None:
                return
            taken, merges = work
            try:
                self.predictor.merge_each(merges)
                self._run(taken)
            except Exception as exc:  # a bug must fail these requests, never the thread
                log.exception("inference batch failed")
                for request in taken:
                    request.loop.call_soon_threadsafe(_deliver, request.future, exc)

    def _run(self, taken: list[_Request]) -> None:
        start = time.perf_counter()
        ready = []
        for request in taken:
            try:
                request.loaded = self.predictor.resolve(request.names, request.param)
                ready.append(request)
            except ServiceError as exc:  # one request's bad adapter fails only that request
                request.loop.call_soon_threadsafe(_deliver, request.future, exc)
        # Explicit modes are honoured per request; `auto` requests are decided together.
        for mode in ("unmerged", "merged", "auto"):
            group = [r for r in ready if r.mode == mode]
            if group:
                self._forward(group, mode, start)

    def _forward(self, group: list[_Request], mode: Mode, start: float) -> None:
        names = [n for r in group for n in r.names]
        loaded: Loaded = {}
        for request in group:
            loaded.update(request.loaded)
        used = self.predictor.choose(mode, loaded, names)
        x = _cat([r.x for r in group]) if len(group) > 1 else group[0].x
        model_start = time.perf_counter()
        outputs = self.predictor.forward(x, names, loaded, used)
        model_ms = (time.perf_counter() - model_start) * 1000
        self.on_batch(len(x), used)
        offset = 0
        for request in group:
            rows = outputs[offset : offset + len(request.x)]
            offset += len(request.x)
            queue_ms = (start - request.enqueued) * 1000
            result = Result(rows, used, queue_ms, model_ms)
            request.loop.call_soon_threadsafe(_deliver, request.future, result)


def _cat(parts: list[Rows]) -> Rows:
    """One batch of several requests' rows (texts padded to the longest)."""
    if isinstance(parts[0], TokenBatch):
        return TokenBatch.cat([cast(TokenBatch, p) for p in parts])
    return torch.cat([cast(Tensor, p) for p in parts])
