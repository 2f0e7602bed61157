"""The `mlp` family: vectors in, vectors out (POST /v1/predict); our own config.json and weights."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import ClassVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from app.families.family import Family
from app.families.mlp.config import ModelConfig
from app.families.mlp.module import build_module
from app.lora import LoraAdapter
from app.lora.layers import wrap_layers
from app.model import BaseModel, InvalidModelConfig, file_sha256
from app.model.dtype import DtypeSetting, resolve_dtype
from app.startup.basekind import is_hf_folder
from app.state import Database, ObjectStore
from app.training.datasets import DatasetStore
from app.training.jobs import Job
from app.training.trainer import TrainConfig, train_lora


class MlpFamily(Family):
    name = "mlp"
    task = "regression"
    inputs = "vectors"
    offers = "takes vectors, not texts; use POST /v1/predict"
    endpoint = "POST /v1/predict"
    losses: ClassVar[tuple[str, ...]] = ("mse", "cross_entropy")
    trains_on = "vectors"

    def __init__(self, base: BaseModel, config: ModelConfig) -> None:
        super().__init__(base)
        self.config = config

    @classmethod
    def claims(cls, folder: Path) -> bool:
        return not is_hf_folder(folder)  # ours, or nothing: ModelConfig.load says why

    @classmethod
    def load(cls, folder: Path, device: torch.device, name: str, dtype: DtypeSetting) -> MlpFamily:
        config = ModelConfig.load(folder)
        # The family keeps its config's dtype whatever DTYPE says (a mismatch is logged).
        resolve_dtype(dtype, device, config.torch_dtype)
        module = build_module(config)
        weights_path = folder / "model.safetensors"
        try:
            state = load_file(weights_path)
        except (OSError, SafetensorError) as exc:
            raise InvalidModelConfig(f"cannot read {weights_path}: {exc}") from exc
        module.load_state_dict(state, strict=True)
        module.to(device=device, dtype=config.torch_dtype)
        module.requires_grad_(False)
        module.eval()
        base = BaseModel(
            name=name,
            architecture=config.architecture,
            family=cls.name,
            module=module,
            device=device,
            dtype=config.torch_dtype,
            fingerprint=file_sha256(weights_path),
            targets=wrap_layers(module),
            input_dim=config.sizes[0],
            output_dim=config.sizes[-1],
        )
        return cls(base, config)

    def default_targets(self) -> tuple[str, ...] | None:
        return None  # every layer: the reference example trains both

    def dataset_store(self, db: Database, objects: ObjectStore, max_rows: int) -> DatasetStore:
        return DatasetStore(db, objects, self.base.input_dim or 0, self.base.output_dim, max_rows)

    def trainer(
        self, datasets: DatasetStore, job: Job, config: TrainConfig
    ) -> Callable[..., LoraAdapter]:
        device = self.base.device
        x, y = (t.to(device) for t in datasets.load(job.training_dataset))
        validation = None
        if job.validation_dataset is not None:
            xv, yv = datasets.load(job.validation_dataset)
            validation = (xv.to(device), yv.to(device))
        return partial(train_lora, self.base.module, config, x, y, validation)
