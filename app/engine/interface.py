"""What the HTTP layer sees of the engine, whether it batches (Batcher) or not (DirectRunner)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from torch import Tensor

from app.engine.predictor import Mode, UsedMode
from app.errors import QueueFull
from app.model import Rows

OnBatch = Callable[[int, UsedMode], None]  # (rows, mode) of every forward, for the metrics


@dataclass(frozen=True)
class Result:
    outputs: Tensor  # (n, out) float32, CPU
    mode: UsedMode
    queue_ms: float
    model_ms: float


def queue_full(waiting: int) -> QueueFull:
    """The 503 both engines give a request that would overflow MAX_QUEUE_ROWS."""
    return QueueFull(f"the prediction queue is full ({waiting} rows waiting); retry shortly")


class Engine(Protocol):
    """Runs prediction requests on the compute thread."""

    @property
    def queued_rows(self) -> int:
        """Rows waiting for the model."""
        ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    async def submit(self, x: Rows, names: list[str | None], mode: Mode, param: str) -> Result:
        """`x`'s outputs, row i through `names[i]`'s adapter (or the base alone)."""
        ...
