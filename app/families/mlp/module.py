"""The `mlp` architecture: a stack of nn.Linear layers named layer1, layer2, ..."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from app.families.mlp.config import ModelConfig
from app.model import InvalidModelConfig

_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "tanh": torch.tanh,
}


class MLP(nn.Module):
    """sizes[i-1] -> sizes[i] linear layers, the activation between layers, not after the last."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        for i, (n_in, n_out) in enumerate(itertools.pairwise(config.sizes)):
            self.add_module(f"layer{i + 1}", nn.Linear(n_in, n_out, bias=config.bias))
        self._act = _ACTIVATIONS[config.activation] if config.activation else None

    def forward(self, x: Tensor) -> Tensor:
        """(N, sizes[0]) -> (N, sizes[-1]).

        Adapters reach the layers as they reach any family's: wrapped layers and the plan of
        the current call (app.lora.layers), never through this method's arguments.
        """
        layers = list(self.children())
        for i, layer in enumerate(layers):
            x = layer(x)
            if self._act is not None and i < len(layers) - 1:
                x = self._act(x)
        return x


# Architectures are a small registry: name -> constructor from the config.
ARCHITECTURES: dict[str, Callable[[ModelConfig], nn.Module]] = {"mlp": MLP}


def build_module(config: ModelConfig) -> nn.Module:
    """An untrained module of the config's architecture."""
    try:
        constructor = ARCHITECTURES[config.architecture]
    except KeyError:
        raise InvalidModelConfig(
            f"unknown architecture {config.architecture!r}; known: {sorted(ARCHITECTURES)}"
        ) from None
    return constructor(config)
