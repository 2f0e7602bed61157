"""The `mlp` architecture: a stack of nn.Linear layers named layer1, layer2, ..."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from app.lora import LinearFn
from app.model.config import ModelConfig

_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "tanh": torch.tanh,
}


def plain_linear(name: str, layer: nn.Linear, x: Tensor) -> Tensor:
    """The base layer alone."""
    return layer(x)


class MLP(nn.Module):
    """sizes[i-1] -> sizes[i] linear layers, the activation between layers, not after the last."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        for i, (n_in, n_out) in enumerate(itertools.pairwise(config.sizes)):
            self.add_module(f"layer{i + 1}", nn.Linear(n_in, n_out, bias=config.bias))
        self._act = _ACTIVATIONS[config.activation] if config.activation else None

    def forward(self, x: Tensor, linear: LinearFn = plain_linear) -> Tensor:
        """(N, sizes[0]) -> (N, sizes[-1]), each layer applied through `linear`.

        `linear` comes with each call (base, LoRA on the fly, merged weights), so there is
        never a global "active adapter" and concurrent callers cannot see each other's.
        """
        layers = list(self.named_children())
        for i, (name, layer) in enumerate(layers):
            # Usually an nn.Linear; PEFT's own wrapper when PEFT has injected LoRA layers.
            x = linear(name, cast(nn.Linear, layer), x)
            if self._act is not None and i < len(layers) - 1:
                x = self._act(x)
        return x
