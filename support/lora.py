"""The LoRA math written out longhand, and tiny models and adapters to check it on."""

from __future__ import annotations

import torch
from torch import nn

from app.families.mlp.config import ModelConfig
from app.families.mlp.module import MLP
from app.lora import (
    LoraAdapter,
    LoraConfig,
    LoraModule,
    base_layer,
)

SIZES = [96, 80, 72]


def make_model(seed: int = 0, bias: bool = True, activation: str | None = "gelu") -> MLP:
    torch.manual_seed(seed)
    model = MLP(ModelConfig(architecture="mlp", sizes=SIZES, bias=bias, activation=activation))
    return model.requires_grad_(False).eval()


def make_adapter(
    model: nn.Module, r: int, targets: tuple[str, ...], seed: int, alpha: float = 16.0, **kw
) -> LoraAdapter:
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, **kw)
    gen = torch.Generator().manual_seed(seed)
    modules = {}
    for name in targets:
        layer = base_layer(model, name)
        rank = config.rank_for(name)
        a = torch.randn(rank, layer.in_features, generator=gen) / layer.in_features
        b = torch.randn(layer.out_features, rank, generator=gen) / rank
        modules[name] = LoraModule(a, b, config.scaling_for(name))
    return LoraAdapter(config, modules)


def longhand(model: MLP, x: torch.Tensor, adapter: LoraAdapter | None) -> torch.Tensor:
    """x @ W.T + b + s * (x @ A.T) @ B.T per layer, in float64."""
    h = x.double()
    names = ["layer1", "layer2"]
    for i, name in enumerate(names):
        layer = base_layer(model, name)
        y = h @ layer.weight.double().T + layer.bias.double()
        if adapter is not None and name in adapter.modules:
            m = adapter.modules[name]
            y = y + m.scaling * (h @ m.lora_A.double().T) @ m.lora_B.double().T
        h = torch.nn.functional.gelu(y) if i < len(names) - 1 else y
    return h
