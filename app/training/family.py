"""What training asks of the base's family: the shared loop never asks which family it is.

app.families.Family is one; tests may hand in any object of this shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from app.lora import LoraAdapter
from app.training.datasets import DatasetStore
from app.training.hyperparameters import Defaults, TrainConfig
from app.training.jobs import Job


class Trainable(Defaults, Protocol):
    def trainer(
        self, datasets: DatasetStore, job: Job, config: TrainConfig
    ) -> Callable[..., LoraAdapter]: ...
