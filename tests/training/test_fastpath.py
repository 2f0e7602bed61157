"""What the training plan caches, and that it falls back where its shortcut does not hold."""

from __future__ import annotations

import torch
from torch import nn

from app.families.mlp.config import ModelConfig
from app.families.mlp.module import MLP
from app.lora import LoraModule
from app.training.fastpath import LowRank, TrainingPlan, dense, plan_training
from support.helpers import forward


def model(activation: str | None, sizes=(12, 10, 8, 6)) -> MLP:
    torch.manual_seed(0)
    config = ModelConfig(architecture="mlp", sizes=list(sizes), bias=True, activation=activation)
    return MLP(config).requires_grad_(False).eval()


def test_a_linear_chain_is_cached_end_to_end_and_handed_on_in_pieces() -> None:
    m = model(None)
    x = torch.randn(40, 12)
    plan = plan_training(m, x, ["layer1", "layer3"])
    assert set(plan.cache) == {"layer1", "layer2", "layer3"}
    assert plan.lowrank_out == {"layer1", "layer2", "layer3"}
    torch.testing.assert_close(plan.cache["layer3"], m(x))


def test_with_activations_only_the_input_layer_is_cached() -> None:
    m = model("relu")
    x = torch.randn(40, 12)
    plan = plan_training(m, x, ["layer1", "layer2"])
    assert set(plan.cache) == {"layer1"} and plan.lowrank_out == set()


def test_the_cache_budget_is_respected() -> None:
    m = model(None)
    x = torch.randn(40, 12)
    one_layer = 40 * 10 * 4
    plan = plan_training(m, x, ["layer1"], cache_bytes=one_layer)
    assert set(plan.cache) == {"layer1"}
    assert plan_training(m, x, ["layer1"], cache_bytes=0).cache == {}


class Residual(nn.Module):
    """layer2 takes layer1's output unchanged, but so does a residual add: pieces would break."""

    def __init__(self) -> None:
        super().__init__()
        self.layer1 = nn.Linear(6, 6)
        self.layer2 = nn.Linear(6, 6)

    def forward(self, x):
        h = self.layer1(x)
        return h + self.layer2(h)


def test_a_model_where_the_shortcut_is_wrong_falls_back() -> None:
    m = Residual().requires_grad_(False)
    x = torch.randn(20, 6)
    plan = plan_training(m, x, ["layer1", "layer2"])
    assert set(plan.cache) == {"layer1"} and plan.lowrank_out == set()
    modules = {"layer1": LoraModule(torch.randn(2, 6), torch.randn(6, 2), 0.5)}
    rows = torch.arange(5)
    fast = dense(forward(m, plan.linear(modules, rows), x[rows]))
    slow = forward(m, TrainingPlan().linear(modules, None), x[rows])
    torch.testing.assert_close(fast, slow)


def test_low_rank_pieces_multiply_like_the_dense_matrix() -> None:
    base, u, v, m = torch.randn(5, 7), torch.randn(5, 2), torch.randn(7, 2), torch.randn(3, 7)
    piece = LowRank(base, ((u, v),))
    torch.testing.assert_close(piece.dense(), base + u @ v.T)
    torch.testing.assert_close(piece.times_t(m), (base + u @ v.T) @ m.T)
