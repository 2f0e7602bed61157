"""The encoder family (`hf`): texts in, one embedding each (POST /v1/embeddings), as
sentence-transformers computes them; trained contrastively on text pairs."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import ClassVar

import torch

from app.families.encoder.datasets import PairDatasetStore
from app.families.encoder.model import load_hf
from app.families.encoder.text import TextEncoder
from app.families.encoder.training import train_text_lora
from app.families.family import PEFT_TARGETS, Facts, Family, safetensors_weights
from app.lora import LoraAdapter
from app.lora.layers import wrap_layers
from app.model import BaseModel, file_sha256
from app.model.dtype import DtypeSetting, resolve_dtype
from app.startup.basekind import is_causal_lm, is_hf_folder
from app.state import Database, ObjectStore
from app.training.datasets import DatasetStore
from app.training.jobs import Job
from app.training.trainer import TrainConfig


class EncoderFamily(Family):
    name = "hf"
    task = "embedding"
    inputs = "texts"
    offers = "takes texts, not vectors; use POST /v1/embeddings"
    endpoint = "POST /v1/embeddings"
    losses: ClassVar[tuple[str, ...]] = ("contrastive",)
    trains_on = "text pairs"

    def __init__(self, base: BaseModel, text: TextEncoder) -> None:
        super().__init__(base)
        self.text = text  # the tokenizer, and how token states pool into an embedding

    @classmethod
    def claims(cls, folder: Path) -> bool:
        return is_hf_folder(folder) and not is_causal_lm(folder)

    @classmethod
    def load(
        cls, folder: Path, device: torch.device, name: str, dtype: DtypeSetting
    ) -> EncoderFamily:
        weights_path = safetensors_weights(folder)
        served = resolve_dtype(dtype, device)
        module, text, dim = load_hf(folder, served)
        module.to(device=device)
        base = BaseModel(
            name=name,
            architecture=str(getattr(getattr(module, "config", None), "model_type", "hf")),
            family=cls.name,
            module=module,
            device=device,
            dtype=served,
            fingerprint=file_sha256(weights_path),
            targets=wrap_layers(module),
            input_dim=None,
            output_dim=dim,
            outputs=text.embed,
        )
        return cls(base, text)

    @property
    def facts(self) -> Facts:
        return Facts(max_seq_length=self.text.max_seq_length)

    def default_targets(self) -> tuple[str, ...] | None:
        return PEFT_TARGETS.get(self.base.architecture)

    def dataset_store(self, db: Database, objects: ObjectStore, max_rows: int) -> DatasetStore:
        return PairDatasetStore(db, objects, max_rows)

    def trainer(
        self, datasets: DatasetStore, job: Job, config: TrainConfig
    ) -> Callable[..., LoraAdapter]:
        assert isinstance(datasets, PairDatasetStore)  # the store dataset_store made
        pairs = datasets.load_pairs(job.training_dataset)
        held_out = None
        if job.validation_dataset is not None:
            held_out = datasets.load_pairs(job.validation_dataset)
        return partial(train_text_lora, self.base.module, self.text, config, pairs, held_out)
