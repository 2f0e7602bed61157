"""The frozen base every family loads into: what the shared code needs to know of a model.

A family (app.families) loads its folder and fills one of these; nothing here asks which family
it is. How a family turns rows into outputs, beyond calling the module, is its `outputs`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from app.model.conv1d import Conv1DLinear
from app.model.tokens import TokenBatch

# What one request row is: a vector (mlp) or a tokenized text (a transformer).
Rows = Tensor | TokenBatch


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
    architecture: str  # `mlp`, or the Hugging Face model_type
    family: str  # the family's name, as GET /v1/model reports it: mlp, hf, causal_lm
    module: nn.Module
    device: torch.device
    dtype: torch.dtype
    fingerprint: str  # sha256 of model.safetensors: which base an adapter was made for
    targets: dict[str, nn.Linear]  # the layers LoRA can target (wrapped), by module name
    input_dim: int | None  # an input vector's width; None for a text base
    output_dim: int  # an output row's width, the embedding size, or the vocabulary
    frozen: frozenset[str] = frozenset()  # modules no adapter may touch (a decoder's head)
    # The family's forward from rows to outputs (an encoder pools its token states).
    outputs: Callable[[nn.Module, Any], Tensor] = field(default=lambda m, x: m(x), repr=False)

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def linears(self) -> dict[str, LinearInfo]:
        """Every targetable layer by its module name, in model order."""
        return {
            name: LinearInfo(name, m.in_features, m.out_features)
            for name, m in self.targets.items()
        }

    @property
    def conv1d(self) -> frozenset[str]:
        """The targetable layers that were GPT-2 Conv1Ds (PEFT says `fan_in_fan_out` for them)."""
        return frozenset(n for n, m in self.targets.items() if isinstance(m, Conv1DLinear))

    def prepare(self, x: Rows) -> Rows:
        """Rows on the model's device (vectors in its dtype; token ids keep theirs)."""
        return x.to(device=self.device, dtype=self.dtype)

    def run(self, x: Rows) -> Tensor:
        """One forward: (N, output_dim), under whatever plan the caller has set."""
        return self.outputs(self.module, x)


def resolve_device(setting: str) -> torch.device:
    """`auto` picks CUDA when present, else the CPU."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("DEVICE=cuda but no CUDA device is available")
    return torch.device(setting)


def file_sha256(path: Path) -> str:
    """A weights file's fingerprint."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
