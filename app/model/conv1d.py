"""GPT-2's Conv1D layers as the nn.Linear they compute, so every plan treats them alike."""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn


class Conv1DLinear(nn.Linear):
    """An nn.Linear that was a GPT-2 Conv1D: the layers whose adapters say `fan_in_fan_out`."""


def _as_linear(conv: nn.Module) -> nn.Linear:
    """GPT-2's Conv1D (weight (in, out)) as the nn.Linear it computes (weight (out, in)).

    Adapters for it (PEFT's `fan_in_fan_out: true`) hold A and B exactly as for a Linear, so once
    converted the layer takes every plan the same way.
    """
    weight = cast(Tensor, conv.weight)  # (in, out)
    bias = cast(Tensor | None, conv.bias)
    linear = Conv1DLinear(weight.shape[0], weight.shape[1], bias=bias is not None)
    linear = linear.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight.T)
        if bias is not None:
            linear.bias.copy_(bias)
    return linear


def convert_conv1d(model: nn.Module) -> None:
    """Replace every transformers Conv1D by an equivalent nn.Linear, in place."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is what loaded the model
        return
    for name, module in list(model.named_modules()):
        if isinstance(module, Conv1D):
            parent, _, child = name.rpartition(".")
            model.get_submodule(parent).register_module(child, _as_linear(module))
