"""Load a base model folder (config.json + model.safetensors) frozen, in eval mode."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from app.model.config import InvalidModelConfig, ModelConfig
from app.model.mlp import MLP

# Architectures are a small registry: name -> constructor from the config.
ARCHITECTURES: dict[str, Callable[[ModelConfig], nn.Module]] = {"mlp": MLP}


@dataclass(frozen=True)
class LinearInfo:
    """A linear layer LoRA can target."""

    name: str
    in_features: int
    out_features: int


@dataclass
class BaseModel:
    """The frozen base model and what the rest of the service needs to know about it."""

    name: str
    config: ModelConfig
    module: nn.Module
    device: torch.device
    fingerprint: str  # sha256 of model.safetensors: which base an adapter was made for

    @property
    def input_dim(self) -> int:
        return self.config.sizes[0]

    @property
    def output_dim(self) -> int:
        return self.config.sizes[-1]

    @property
    def dtype(self) -> torch.dtype:
        return self.config.torch_dtype

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def linears(self) -> dict[str, LinearInfo]:
        """Every nn.Linear by its module name, in model order."""
        return {
            name: LinearInfo(name, m.in_features, m.out_features)
            for name, m in self.module.named_modules()
            if isinstance(m, nn.Linear)
        }


def resolve_device(setting: str) -> torch.device:
    """`auto` picks CUDA when present, else the CPU."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("DEVICE=cuda but no CUDA device is available")
    return torch.device(setting)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_module(config: ModelConfig) -> nn.Module:
    """An untrained module of the config's architecture."""
    try:
        constructor = ARCHITECTURES[config.architecture]
    except KeyError:
        raise InvalidModelConfig(
            f"unknown architecture {config.architecture!r}; known: {sorted(ARCHITECTURES)}"
        ) from None
    return constructor(config)


def load_base_model(folder: Path, device: torch.device) -> BaseModel:
    """Build the architecture, load its weights strictly, freeze it, move it to `device`."""
    config = ModelConfig.load(folder)
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
    return BaseModel(
        name=folder.resolve().name,
        config=config,
        module=module,
        device=device,
        fingerprint=_sha256(weights_path),
    )
