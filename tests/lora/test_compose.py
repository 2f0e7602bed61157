"""Combining adapters (app.lora.compose) against PEFT's own add_weighted_adapter on the same
sources: the same A and B where the method is deterministic up to rounding (cat, linear), the
same update B·A everywhere (an SVD's factors are unique only up to signs)."""

from __future__ import annotations

import pytest
import torch

from app.families.mlp.config import ModelConfig
from app.families.mlp.module import MLP
from app.lora import LoraAdapter, LoraConfig, LoraModule, lora_scaling
from app.lora.compose import CompositionError, compose

peft = pytest.importorskip("peft")

SIZES = [24, 20, 16]
ORDER = ["layer1", "layer2"]
# name -> (rank, alpha, targets, use_rslora)
SOURCES = {
    "x1": (4, 8.0, ("layer1", "layer2"), False),
    "x2": (2, 3.0, ("layer2",), False),
    "x3": (4, 2.0, ("layer1",), True),
}


def _adapter(name: str, seed: int) -> LoraAdapter:
    r, alpha, targets, rslora = SOURCES[name]
    gen = torch.Generator().manual_seed(seed)
    modules = {}
    for t in targets:
        n_in, n_out = {"layer1": (24, 20), "layer2": (20, 16)}[t]
        modules[t] = LoraModule(
            torch.randn(r, n_in, generator=gen) * 0.3,
            torch.randn(n_out, r, generator=gen) * 0.3,
            lora_scaling(alpha, r, rslora),
        )
    return LoraAdapter(LoraConfig(r, alpha, targets, rslora), modules)


ADAPTERS = {name: _adapter(name, i) for i, name in enumerate(SOURCES)}


def _peft_model(names: list[str]):
    torch.manual_seed(0)
    base = MLP(ModelConfig(architecture="mlp", sizes=SIZES))
    model = None
    for name in names:
        r, alpha, targets, rslora = SOURCES[name]
        config = peft.LoraConfig(
            r=r, lora_alpha=alpha, target_modules=list(targets), use_rslora=rslora
        )
        if model is None:
            model = peft.get_peft_model(base, config, adapter_name=name)
        else:
            model.add_adapter(name, config)
        for t, m in ADAPTERS[name].modules.items():
            layer = model.base_model.model.get_submodule(t)
            layer.lora_A[name].weight.data.copy_(m.lora_A)
            layer.lora_B[name].weight.data.copy_(m.lora_B)
    return model


def _peft_combined(names, weights, method, rank=None, density=None, seed=0, monkeypatch=None):
    model = _peft_model(names)
    # PEFT's DARE draws its masks from torch's global generator, after the draws that initialise
    # the new adapter; ours from a generator of its own. Given one stream of masks, in the same
    # order, the two must agree.
    masks = torch.Generator().manual_seed(seed)

    def random_pruning(tensor, density, rescale):
        pruned = tensor * torch.bernoulli(torch.full_like(tensor, density), generator=masks)
        return pruned / density if rescale else pruned

    if monkeypatch is not None:
        monkeypatch.setattr(peft.utils.merge_utils, "random_pruning", random_pruning)
    model.add_weighted_adapter(
        names, weights, "combined", combination_type=method, svd_rank=rank, density=density
    )
    out = {}
    for t in ORDER:
        layer = model.base_model.model.get_submodule(t)
        if hasattr(layer, "lora_A") and "combined" in layer.lora_A:
            out[t] = (
                layer.lora_A["combined"].weight.detach(),
                layer.lora_B["combined"].weight.detach(),
                layer.scaling["combined"],
            )
    return model.peft_config["combined"], out


CASES = [
    (["x1", "x2"], [0.7, -1.3], "cat", None, None),
    (["x1", "x2", "x3"], [1.0, 0.5, 2.0], "cat", None, None),
    (["x1", "x3"], [0.6, -0.4], "linear", None, None),
    (["x1", "x2", "x3"], [1.0, 0.5, -2.0], "svd", None, None),
    (["x1", "x2"], [1.0, 0.5], "svd", 3, None),
    (["x1", "x2", "x3"], [1.0, 0.5, 2.0], "ties_svd", 4, 0.5),
    (["x1", "x3"], [0.8, 1.2], "dare_ties_svd", 5, 0.6),
    (["x2"], [2.5], "svd", None, None),  # one source: PEFT combines it linearly
]


@pytest.mark.parametrize(("names", "weights", "method", "rank", "density"), CASES)
def test_equals_peft_add_weighted_adapter(
    names, weights, method, rank, density, monkeypatch
) -> None:
    config, expected = _peft_combined(names, weights, method, rank, density, 7, monkeypatch)
    ours = compose(
        [(ADAPTERS[n], w) for n, w in zip(names, weights, strict=True)],
        method, ORDER, rank=rank, density=density, seed=7,
    )  # fmt: skip
    assert ours.config.r == config.r and ours.config.lora_alpha == config.lora_alpha
    assert sorted(ours.modules) == sorted(expected) == sorted(config.target_modules)
    for t, (a, b, scaling) in expected.items():
        m = ours.modules[t]
        assert m.scaling == pytest.approx(scaling) and m.lora_A.shape == a.shape
        torch.testing.assert_close(m.lora_B @ m.lora_A, b @ a, atol=1e-5, rtol=1e-5)
        if method in ("cat", "linear"):
            torch.testing.assert_close(m.lora_A, a, atol=1e-6, rtol=1e-6)
            torch.testing.assert_close(m.lora_B, b, atol=1e-6, rtol=1e-6)


def test_cat_is_the_weighted_sum_of_the_updates_exactly() -> None:
    """`cat` loses nothing: its update is Σ w_i s_i B_i A_i, written out in float64."""
    weights = {"x1": 0.7, "x2": -1.3, "x3": 2.0}
    ours = compose([(ADAPTERS[n], w) for n, w in weights.items()], "cat", ORDER)
    for t in ORDER:
        expected = sum(
            w * ADAPTERS[n].modules[t].scaling
            * ADAPTERS[n].modules[t].lora_B.double() @ ADAPTERS[n].modules[t].lora_A.double()
            for n, w in weights.items()
            if t in ADAPTERS[n].modules
        )  # fmt: skip
        got = (
            ours.modules[t].scaling
            * ours.modules[t].lora_B.double()
            @ ours.modules[t].lora_A.double()
        )
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


def test_arguments_that_cannot_combine_say_why() -> None:
    with pytest.raises(CompositionError, match="one rank"):
        compose([(ADAPTERS["x1"], 1.0), (ADAPTERS["x2"], 1.0)], "linear", ORDER)
    with pytest.raises(CompositionError, match="density"):
        compose([(ADAPTERS["x1"], 1.0), (ADAPTERS["x3"], 1.0)], "ties_svd", ORDER)
    with pytest.raises(CompositionError, match="at least one"):
        compose([], "cat", ORDER)
