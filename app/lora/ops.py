"""LoRA applied to linear layers: unmerged on the fly, or merged into a copy of the weights."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

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
        """Its tensors' bytes, with those of the copy its terms are computed in (`terms`), made
        or not, so that a cache that counts adapters counts the same bytes in and out."""
        tensors = [t for m in self.modules.values() for t in (m.lora_A, m.lora_B)]
        held = sum(t.numel() * t.element_size() for t in tensors)
        if tensors and term_dtype(tensors[0].dtype, tensors[0].device) != tensors[0].dtype:
            held += sum(t.numel() * torch.finfo(torch.float32).bits // 8 for t in tensors)
        return held

    @cached_property
    def terms(self) -> LoraAdapter:
        """This adapter in the dtype its terms are computed in (see term_dtype): itself, or
        a copy made once."""
        first = next(iter(self.modules.values()), None)
        if first is None:
            return self
        dtype = term_dtype(first.lora_A.dtype, first.lora_A.device)
        return self if dtype == first.lora_A.dtype else self.to(first.lora_A.device, dtype)

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


def term_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype LoRA terms are computed in: fp32 on the CPU for 16-bit bases, whose products at
    rank widths torch runs 3-5x slower in bf16 there (66 against 22 us for a rank-8 term of one
    row of 576, casts included); the base's own dtype elsewhere."""
    if device.type == "cpu" and dtype in (torch.bfloat16, torch.float16):
        return torch.float32
    return dtype


def unmerged_linear(adapter: LoraAdapter | None) -> DeltaPlan:
    """Apply `adapter` on the fly: y = layer(x) + its LoRA term on targeted layers."""
    terms = adapter.terms if adapter is not None else None

    def add(name: str, x: Tensor, y: Tensor) -> None:
        module = terms.modules.get(name) if terms is not None else None
        if module is not None:
            add_term(y, x, module)

    return DeltaPlan(add)


def add_term(y: Tensor, x: Tensor, module: LoraModule) -> None:
    """y += the term of `module` (held in its term dtype) for rows x, in y's dtype."""
    # Cast back before adding: torch adds fp32 into bf16 in place 10x slower.
    y.add_(lora_delta(x.to(module.lora_A.dtype), module).to(y.dtype))


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
