"""BATCHING=false: each request is its own batch, run in arrival order on the compute thread.

The baseline that dynamic batching is measured against, and a choice for latency-bound
deployments. It keeps the batcher's other promises: a bounded queue (503 when full) and merged
copies for adapters with a full batch of rows waiting, so `auto` merges hot adapters here too.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

from app.engine.batcher import merge_all
from app.engine.compute import ComputeThread
from app.engine.interface import OnBatch, Result
from app.engine.predictor import Mode, Predictor
from app.errors import QueueFull
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
                raise QueueFull(
                    f"the prediction queue is full ({self._queued_rows} rows waiting); retry shortly"
                )
            self._queued_rows += rows
            self._backlog.update(named)
        enqueued = time.perf_counter()
        left = [True]  # cleared once the rows leave the queue, by whichever side does it first

        def dequeue() -> None:
            with self._lock:
                if left[0]:
                    left[0] = False
                    self._queued_rows -= rows
                    self._backlog.subtract(named)
                    self._backlog += Counter()  # drop the zeros

        def run() -> Result:
            start = time.perf_counter()
            with self._lock:
                backlog = dict(self._backlog)
            dequeue()
            merge_all(self.predictor, self.predictor.merges_due(backlog, self.merge_rows))
            model_start = time.perf_counter()
            outputs, used = self.predictor.predict(x, names, mode, param)
            model_ms = (time.perf_counter() - model_start) * 1000
            self.on_batch(rows, used)
            return Result(outputs, used, (start - enqueued) * 1000, model_ms)

        try:
            return await self.compute.run(run)
        finally:
            dequeue()  # a request cancelled before it ran leaves the queue too
