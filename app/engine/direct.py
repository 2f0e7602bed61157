"""BATCHING=false: each request is its own batch, run in arrival order on the compute thread.

The baseline that dynamic batching is measured against, and a choice for latency-bound
deployments. It keeps the batcher's other promises: a bounded queue (503 when full) and merged
copies for adapters with a full batch of rows waiting, so `auto` merges hot adapters here too.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

from app.engine.compute import ComputeThread
from app.engine.interface import OnBatch, Result, queue_full
from app.engine.predictor import Mode, Predictor
from app.model import Rows


class DirectRunner:
    def __init__(
        self,
        predictor: Predictor,
        compute: ComputeThread,
        on_batch: OnBatch,
        merge_rows: int,
        max_queue_rows: int,
    ) -> None:
        self.predictor = predictor
        self.compute = compute
        self.on_batch = on_batch
        self.merge_rows = merge_rows  # "a full batch" for the merge rule (MAX_BATCH_ROWS)
        self.max_queue_rows = max_queue_rows
        self._lock = threading.Lock()
        self._queued_rows = 0
        self._backlog: Counter[str] = Counter()  # `auto` rows waiting, per adapter

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    def start(self) -> None:
        pass  # the compute thread is already running

    def stop(self) -> None:
        pass

    async def submit(self, x: Rows, names: list[str | None], mode: Mode, param: str) -> Result:
        rows = len(x)
        named = [n for n in names if n is not None] if mode == "auto" else []
        with self._lock:
            if self._queued_rows + rows > self.max_queue_rows:
                raise queue_full(self._queued_rows)
            self._queued_rows += rows
            self._backlog.update(named)
        enqueued = time.perf_counter()

        def leave_queue() -> dict[str, int]:
            """Take the rows out of the queue; the backlog they were part of."""
            with self._lock:
                backlog = dict(self._backlog)
                self._queued_rows -= rows
                self._backlog -= Counter(named)
                return backlog

        def run() -> Result:
            start = time.perf_counter()
            backlog = leave_queue()
            self.predictor.merge_each(self.predictor.merges_due(backlog, self.merge_rows))
            model_start = time.perf_counter()
            outputs, used = self.predictor.predict(x, names, mode, param)
            model_ms = (time.perf_counter() - model_start) * 1000
            self.on_batch(rows, used)
            return Result(outputs, used, (start - enqueued) * 1000, model_ms)

        future = self.compute.submit(run)
        try:
            return await asyncio.wrap_future(future)
        finally:
            if future.cancelled():  # the client left before it ran: run() never took it out
                leave_queue()
