"""Fused projections: a Llama-style block's q, k and v (and its MLP's gate and up) as one matrix
product each, the LoRA terms added per output slice through the step's plan.

The fused weight is made once, and the layers' own weights become row slices of it (views, so
the weights are held once and every other path, merging and training included, still sees
each layer as it was). A plan that only adds a term (app.lora.DeltaPlan: the base, one adapter
on the fly, a mixed batch) adds each layer's term into its slice of the fused product; a plan
that replaces a layer (merged weights) gets the layers one by one, as before.

On the CPU the weights are also held packed in oneDNN's blocked layout (PACK_WEIGHTS, on), as
vLLM's CPU backend holds its own, at the cost of a second copy of them: in bf16 the same
products bit for bit, 1.2-1.5x faster for a decode step's 16 rows and 2-2.5x for one row; in
fp32 2x faster for 16 rows, summed in another order than MKL's plain product (logits differ
in the last bits, about 1e-4).
o_proj, down_proj and lm_head are "fused" alone for it (one layer, its own weight, no copy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from app.lora import DeltaPlan, LoraLayer, current_plan


@dataclass(frozen=True)
class Fused:
    """Several layers that read the same rows, as one product."""

    layers: tuple[Any, ...]  # the (wrapped) layers, called one by one when a plan needs it
    names: tuple[str, ...]
    slices: tuple[slice, ...]  # each layer's columns of the fused output
    weight: Tensor  # (sum of outs, in)
    bias: Tensor | None
    packed: Tensor | None = None  # the weight in oneDNN's blocked layout

    @classmethod
    def of(cls, layers: list[Any], pack: bool = False) -> Fused | None:
        """Fuse `layers` (None when they cannot be: not plain linear layers, or mixed dtypes)."""
        bases = [_base(m) for m in layers]
        if any(b is None for b in bases):
            return None
        linears = [b for b in bases if b is not None]
        first = linears[0].weight
        if any(
            b.weight.dtype != first.dtype or b.weight.shape[1] != first.shape[1] for b in linears
        ):
            return None
        names = tuple(getattr(m, "name", "") for m in layers)
        if len(linears) == 1:  # alone: its own weight (a tied lm_head stays tied)
            (only,) = linears
            alone = only.weight.detach()
            one_bias = None if only.bias is None else only.bias.detach()
            cols = (slice(0, only.out_features),)
            return cls(tuple(layers), names, cols, alone, one_bias, _packed(alone, pack))
        weight = torch.cat([b.weight.detach() for b in linears])
        has_bias = [b.bias is not None for b in linears]
        bias = None
        if any(has_bias):
            bias = torch.cat(
                [
                    b.bias.detach() if b.bias is not None else first.new_zeros(b.out_features)
                    for b in linears
                ]
            )
        slices, start = [], 0
        for b in linears:
            slices.append(slice(start, start + b.out_features))
            # The layer's weight becomes a view of the fused one: held once.
            b.weight.data = weight[start : start + b.out_features]
            if b.bias is not None and bias is not None:
                b.bias.data = bias[start : start + b.out_features]
            start += b.out_features
        return cls(tuple(layers), names, tuple(slices), weight, bias, _packed(weight, pack))

    def __call__(self, x: Tensor) -> list[Tensor]:
        """Each layer's output for rows `x` (N, in), as it would give it under the plan."""
        y = self.joined(x)
        if y is None:
            return [layer(x) for layer in self.layers]
        return [y[:, s] for s in self.slices]

    def joined(self, x: Tensor) -> Tensor | None:
        """The layers' outputs side by side (N, sum of outs) under the plan; None when the plan
        replaces layers (merged weights), which then go one by one."""
        plan = current_plan()
        if plan is not None and not isinstance(plan, DeltaPlan):
            return None
        if self.packed is not None and x.dim() == 2 and len(x):
            y = torch.ops.mkldnn._linear_pointwise(
                x.contiguous(), self.packed, self.bias, "none", [], ""
            )
        else:
            y = F.linear(x, self.weight, self.bias)
        if plan is not None:
            plan.add_joined(self.names, self.slices, x, y)
        return y


def _packed(weight: Tensor, pack: bool) -> Tensor | None:
    """`weight` reordered for oneDNN's products, where that applies (a float weight on a CPU
    whose torch has oneDNN); None elsewhere, and the plain product is used."""
    if not pack or weight.device.type != "cpu" or weight.dtype not in _PACKED:
        return None
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        packed: Tensor = torch.ops.mkldnn._reorder_linear_weight(weight)
    except (RuntimeError, AttributeError):  # an op this build lacks: the plain product
        return None
    return packed


_PACKED = (torch.bfloat16, torch.float16, torch.float32)


def _base(module: Any) -> nn.Linear | None:
    if isinstance(module, LoraLayer):
        module = module.base_layer
    return module if type(module) is nn.Linear else None


@dataclass(frozen=True)
class FusedBlock:
    """One decoder block's fused products (None where its layers could not be fused)."""

    qkv: Fused | None
    gate_up: Fused | None
    o: Fused | None = None
    down: Fused | None = None


def fuse_block(attn: Any, mlp: Any, pack: bool = False) -> FusedBlock:
    qkv = Fused.of([attn.q_proj, attn.k_proj, attn.v_proj], pack)
    gate_up = down = None
    if hasattr(mlp, "gate_proj") and hasattr(mlp, "up_proj") and hasattr(mlp, "act_fn"):
        gate_up = Fused.of([mlp.gate_proj, mlp.up_proj], pack)
        down = Fused.of([mlp.down_proj], pack) if pack else None
    o = Fused.of([attn.o_proj], pack) if pack else None
    return FusedBlock(qkv, gate_up, o, down)
