"""LoRA applied to linear layers: unmerged on the fly, or merged into a copy of the weights."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from app.lora.config import LoraConfig
from app.lora.layers import DeltaPlan, LinearFn, base_layer


@dataclass(frozen=True)
class LoraModule:
    """One targeted layer's update, delta W = scaling * B @ A."""

    lora_A: Tensor  # (r, in)
    lora_B: Tensor  # (out, r)
    scaling: float

    @property
    def rank(self) -> int:
        return self.lora_A.shape[0]


@dataclass(frozen=True)
class LoraAdapter:
    """A whole adapter: its config and the modules it targets, by module name."""

    config: LoraConfig
    modules: Mapping[str, LoraModule]

    @property
    def nbytes(self) -> int:
        return sum(
            t.numel() * t.element_size()
            for m in self.modules.values()
            for t in (m.lora_A, m.lora_B)
        )

    def to(self, device: torch.device, dtype: torch.dtype) -> LoraAdapter:
        """A copy of the tensors on `device` in `dtype`."""
        modules = {
            name: LoraModule(
                m.lora_A.to(device=device, dtype=dtype),
                m.lora_B.to(device=device, dtype=dtype),
                m.scaling,
            )
            for name, m in self.modules.items()
        }
        return LoraAdapter(self.config, modules)


def init_lora_module(
    in_features: int, out_features: int, r: int, scaling: float, generator: torch.Generator
) -> LoraModule:
    """A fresh module as PEFT makes one: A kaiming-uniform, B zero, so it starts as the base."""
    lora_A = torch.empty(r, in_features)
    # kaiming_uniform_(a=sqrt(5)) on an (r, in) weight: bound = 1 / sqrt(in), as nn.Linear.
    bound = 1.0 / math.sqrt(in_features)
    lora_A.uniform_(-bound, bound, generator=generator)
    return LoraModule(lora_A, torch.zeros(out_features, r), scaling)


def lora_delta(x: Tensor, module: LoraModule) -> Tensor:
    """scaling * (x A^T) B^T, never forming the (out, in) product; scaled at rank width."""
    return ((x @ module.lora_A.T) * module.scaling) @ module.lora_B.T  # (N, r) -> (N, out)


def unmerged_linear(adapter: LoraAdapter | None) -> DeltaPlan:
    """Apply `adapter` on the fly: y = layer(x) + its LoRA term on targeted layers."""

    def add(name: str, x: Tensor, y: Tensor) -> None:
        module = adapter.modules.get(name) if adapter is not None else None
        if module is not None:
            y.add_(lora_delta(x, module))

    return DeltaPlan(add)


def merge_adapter(base: nn.Module, adapter: LoraAdapter) -> dict[str, Tensor]:
    """Merged copies W' = W + scaling * B A of each targeted weight; the base is never written.

    Unmerging is dropping the copy: W is still the pristine base, so nothing drifts.
    The product is formed in fp32 and cast back, so fp16/bf16 bases lose no more than one rounding.
    """
    merged: dict[str, Tensor] = {}
    for name, module in adapter.modules.items():
        w = base_layer(base, name).weight
        delta = module.lora_B.float() @ module.lora_A.float() * module.scaling  # (out, in)
        merged[name] = (w.float() + delta).to(w.dtype)
    return merged


def merged_linear(weights: Mapping[str, Tensor]) -> LinearFn:
    """Apply merged weights where given, the base layer elsewhere."""

    def linear(name: str, layer: nn.Linear, x: Tensor) -> Tensor:
        w = weights.get(name)
        return layer(x) if w is None else F.linear(x, w, layer.bias)

    return linear
