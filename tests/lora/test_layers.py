"""Wrapped layers and per-call plans: names kept, plans scoped to their call and their thread."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from app.lora import (
    LoraLayer,
    base_layer,
    plan_scope,
    unmerged_linear,
    wrap_layers,
)
from support.lora import SIZES, longhand, make_adapter, make_model


class Nested(nn.Module):
    """Linear layers inside containers, as a transformer has them."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(4, 4), nn.ReLU()) for _ in range(2)])
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def test_wrapping_keeps_names_and_outputs_and_is_idempotent() -> None:
    model = Nested().eval()
    x = torch.randn(5, 4)
    before = model(x)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    targets = wrap_layers(model)
    assert list(targets) == ["blocks.0.0", "blocks.1.0", "head"]
    assert all(targets[n] is layers[n] for n in targets)
    assert all(isinstance(model.get_submodule(n), LoraLayer) for n in targets)
    assert wrap_layers(model) == targets  # a second wrap finds the same layers, wraps nothing
    assert not isinstance(model.get_submodule("head").base_layer, LoraLayer)
    assert torch.equal(model(x), before)  # no plan: the base alone
    assert base_layer(model, "head") is layers["head"]
    with pytest.raises(TypeError, match="not a linear layer"):
        base_layer(model, "blocks.0")


def test_a_plan_applies_only_inside_its_scope() -> None:
    model = make_model()
    adapter = make_adapter(model, 4, ("layer1", "layer2"), seed=0)
    wrap_layers(model)
    x = torch.randn(3, SIZES[0])
    base = model(x)
    with plan_scope(unmerged_linear(adapter)):
        inside = model(x)
        with plan_scope(None):  # nested scopes restore the outer plan on exit
            torch.testing.assert_close(model(x), base)
        torch.testing.assert_close(model(x), inside)
    torch.testing.assert_close(model(x), base)
    torch.testing.assert_close(inside.double(), longhand(model, x, adapter), rtol=1e-5, atol=1e-5)


def test_sequence_inputs_are_applied_token_by_token() -> None:
    layer = nn.Linear(6, 5)
    model = nn.Sequential(layer)
    wrap_layers(model)
    seen: list[tuple[int, ...]] = []

    def plan(name: str, base: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape))
        return base(x) + 1.0

    x = torch.randn(2, 7, 6)  # (sequences, tokens, features)
    with plan_scope(plan):
        y = model(x)
    assert seen == [(14, 6)] and y.shape == (2, 7, 5)
    torch.testing.assert_close(y, layer(x) + 1.0)


def test_concurrent_forwards_in_threads_never_see_each_others_adapters() -> None:
    model = make_model()
    adapters = [make_adapter(model, 2 + i, ("layer1", "layer2"), seed=i) for i in range(4)]
    wrap_layers(model)
    x = torch.randn(8, SIZES[0])
    with torch.inference_mode():
        expected = [longhand(model, x, a) for a in [None, *adapters]]
    start = threading.Barrier(5)
    wrong: list[int] = []

    def run(i: int) -> None:
        plan = None if i == 0 else unmerged_linear(adapters[i - 1])
        start.wait()
        with torch.inference_mode():
            for _ in range(200):
                with plan_scope(plan):
                    out = model(x)
                if not torch.allclose(out.double(), expected[i], rtol=1e-5, atol=1e-5):
                    wrong.append(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []
