"""What training asks of the base's family: the shared loop never asks which family it is.

app.families.Family is one; tests may hand in any object of this shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from app.lora import LoraAdapter
from app.model import BaseModel
from app.training.datasets import DatasetStore
from app.training.jobs import Job
from app.training.trainer import TrainConfig


class Trainable(Protocol):
    @property
    def base(self) -> BaseModel: ...

    @property
    def losses(self) -> tuple[str, ...]:
        """The losses it trains with, its default first."""
        ...

    @property
    def trains_on(self) -> str:
        """What its datasets hold, in words."""
        ...

    def default_targets(self) -> tuple[str, ...] | None: ...

    def trainer(
        self, datasets: DatasetStore, job: Job, config: TrainConfig
    ) -> Callable[..., LoraAdapter]: ...
