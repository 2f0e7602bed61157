"""What one family of base models is, as the shared code asks it.

The service serves three families: `mlp` (vectors in, vectors out: /v1/predict), `hf` encoders
(texts in, one embedding each: /v1/embeddings) and `causal_lm` decoders (text generation: the
OpenAI chat and completions routes). Each lives in its own folder under app/families with the
same file names inside; shared code is handed a loaded Family and never asks which one it is.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

import torch

from app.errors import InvalidInput
from app.lora import LoraAdapter
from app.model import BaseModel, InvalidModelConfig
from app.model.dtype import DtypeSetting
from app.state import Database, ObjectStore
from app.training.datasets import DatasetStore
from app.training.jobs import Job
from app.training.trainer import TrainConfig

if TYPE_CHECKING:
    from app.engine import Predictor
    from app.families.decoder.generate.engine import GenerationEngine
    from app.settings import Settings

Task = Literal["regression", "embedding", "generation"]
Name = Literal["mlp", "hf", "causal_lm"]

# PEFT's default targets per model_type, for a transformer base when a job names none (as PEFT
# picks them when LoraConfig has no target_modules); other types default to every linear layer.
PEFT_TARGETS = {
    "bert": ("query", "value"),
    "roberta": ("query", "value"),
    "xlm-roberta": ("query", "value"),
    "mpnet": ("q", "v"),
    "distilbert": ("q_lin", "v_lin"),
    "llama": ("q_proj", "v_proj"),
    "mistral": ("q_proj", "v_proj"),
    "qwen2": ("q_proj", "v_proj"),
    "qwen3": ("q_proj", "v_proj"),
    "gpt2": ("c_attn",),
}


@dataclass(frozen=True)
class Facts:
    """What GET /v1/model and the body limits say of a base beyond its shape."""

    max_seq_length: int | None = None  # an encoder's longest text, in tokens
    context_length: int | None = None  # a decoder's context, in tokens
    vocab_size: int | None = None
    chat_template: bool | None = None


class Family(ABC):
    """A loaded base and everything that differs between families."""

    name: ClassVar[Name]  # as GET /v1/model reports it
    task: ClassVar[Task]
    inputs: ClassVar[Literal["vectors", "texts"]]
    # What a request sent to another family's endpoint is told: "the base model 'x' <offers>".
    offers: ClassVar[str]
    endpoint: ClassVar[str]  # where its requests go, as a 422 elsewhere names it
    losses: ClassVar[tuple[str, ...]]  # the training losses it takes, the default first
    trains_on: ClassVar[str]  # what its datasets hold, in words

    def __init__(self, base: BaseModel) -> None:
        self.base = base

    @classmethod
    @abstractmethod
    def claims(cls, folder: Path) -> bool:
        """Whether `folder` holds a base of this family (read from its files)."""

    @classmethod
    @abstractmethod
    def load(cls, folder: Path, device: torch.device, name: str, dtype: DtypeSetting) -> Family:
        """The base in `folder`, frozen, on `device`, its linear layers wrapped (app.lora)."""

    @property
    def facts(self) -> Facts:
        return Facts()

    def default_targets(self) -> tuple[str, ...] | None:
        """The modules a training job targets when it names none; None: every linear layer."""
        return None

    @abstractmethod
    def dataset_store(self, db: Database, objects: ObjectStore, max_rows: int) -> DatasetStore:
        """Where this family's training datasets live, checked as it trains on them."""

    @abstractmethod
    def trainer(
        self, datasets: DatasetStore, job: Job, config: TrainConfig
    ) -> Callable[..., LoraAdapter]:
        """The job's data, loaded, bound to this family's training loop."""

    def generation(self, predictor: Predictor, settings: Settings) -> GenerationEngine | None:
        """The engine that generates text on this base; None for a family that does not."""
        return None

    def require(self, task: Task, field: str) -> None:
        """A 422 naming the right endpoint when a request asks this base for another task."""
        if task != self.task:
            raise InvalidInput(f"the base model {self.base.name!r} {self.offers}", field)


def safetensors_weights(folder: Path) -> Path:
    """A Hugging Face folder's weights file: only safetensors are read (never pickles)."""
    path = folder / "model.safetensors"
    if not path.is_file():
        raise InvalidModelConfig(f"{path} is missing (only safetensors weights are read)")
    return path
