"""A predictor replica: the base model once, the batching engine, adapters held by version.

Plain Python, so it runs and is tested without Ray; app/deploy/ray.py wraps it in a Serve
deployment whose multiplexer decides which versions stay loaded.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

from app.adapters import base_info
from app.engine import ComputeThread, Mode, Predictor, Result
from app.model import Rows
from app.services import load_family_for, open_registry, prediction_engine
from app.settings import Settings


@dataclass(frozen=True)
class ReplicaSnapshot:
    """What a replica tells the ingress's /metrics (published every second or so)."""

    replica: str
    node: str
    at: float  # time.time() when taken
    # Adapters by version id, as Serve's multiplexer routes them (names are per project, so
    # two projects' "support" would read as one).
    running: list[str]  # with weights in memory, least recently used first
    waiting: list[str]  # requests are waiting for them to be read from the store
    max_adapters: int
    loads: int  # adapter weights read from the store since start
    queued_rows: int
    batches: dict[str, int] = field(default_factory=dict)  # model batches by mode
    rows: int = 0  # rows through the model


class PredictorReplica:
    """Serves predictions for rows already resolved to adapter versions (by the ingress)."""

    def __init__(self, settings: Settings, max_adapters: int, replica: str, node: str) -> None:
        self.replica, self.node, self.max_adapters = replica, node, max_adapters
        self.compute = ComputeThread()
        try:
            base = self.compute.call(load_family_for, settings).base
            self.registry = open_registry(settings, base_info(base))
        except BaseException:
            self.compute.close()
            raise
        self.registry.weights.max_versions = max_adapters
        self.predictor = Predictor(base, self.registry, settings.merged_cache_bytes)
        self.engine = prediction_engine(settings, self.predictor, self.compute, self._count_batch)
        self._waiting: Counter[str] = Counter()
        self._batches: Counter[str] = Counter()
        self._rows = 0
        self.engine.start()

    async def load(self, version: str) -> None:
        """Read a version's weights into memory (the multiplexer calls this on a miss)."""
        self._waiting[version] += 1
        try:
            await asyncio.to_thread(self.registry.load, version)
        finally:
            self._waiting[version] -= 1
            if not self._waiting[version]:
                del self._waiting[version]

    def evict(self, version: str) -> None:
        """Let a version go (the multiplexer is past its capacity): weights and merged copy."""
        self.registry.evict(version)
        self.predictor.merged.forget(version)

    async def predict(self, x: Rows, versions: list[str | None], mode: Mode, param: str) -> Result:
        return await self.engine.submit(x, versions, mode, param)

    def snapshot(self) -> ReplicaSnapshot:
        return ReplicaSnapshot(
            self.replica, self.node, time.time(),
            self.registry.resident_versions(), list(self._waiting),
            self.max_adapters, self.registry.cache_misses, self.engine.queued_rows,
            dict(self._batches), self._rows,
        )  # fmt: skip

    def close(self) -> None:
        self.engine.stop()
        self.compute.close()
        self.registry.db.close()

    def _count_batch(self, rows: int, mode: str) -> None:
        self._batches[mode] += 1
        self._rows += rows
