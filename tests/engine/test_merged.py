"""The merged-weight cache by version id: right weights, LRU eviction within its byte budget."""

from __future__ import annotations

import torch

from app.engine import MergedCache
from app.families.mlp.config import ModelConfig
from app.families.mlp.module import MLP
from app.lora import LoraAdapter, LoraConfig, LoraModule, base_layer

SIZES = [16, 8, 4]
BOTH = 8 * 16 * 4 + 4 * 8 * 4  # bytes of merged layer1 + layer2, float32: 640
LAYER2 = 4 * 8 * 4  # 128


def make_model() -> MLP:
    torch.manual_seed(0)
    model = MLP(ModelConfig(architecture="mlp", sizes=SIZES, bias=True, activation="relu"))
    return model.requires_grad_(False).eval()


def make_adapter(
    targets: tuple[str, ...] = ("layer1", "layer2"), seed: int = 0, r: int = 2
) -> LoraAdapter:
    gen = torch.Generator().manual_seed(seed)
    shapes = {"layer1": (16, 8), "layer2": (8, 4)}
    modules = {
        name: LoraModule(
            torch.randn(r, shapes[name][0], generator=gen),
            torch.randn(shapes[name][1], r, generator=gen),
            scaling=1.5,
        )
        for name in targets
    }
    return LoraAdapter(LoraConfig(r, 3.0, targets), modules)


def test_merged_weights_are_w_plus_s_b_a() -> None:
    model = make_model()
    adapter = make_adapter()
    weights = MergedCache(model, 10 * BOTH).get_or_merge("a", adapter)
    assert set(weights) == {"layer1", "layer2"}
    for name, w in weights.items():
        m = adapter.modules[name]
        base = base_layer(model, name).weight.double()
        ref = base + 1.5 * m.lora_B.double() @ m.lora_A.double()
        torch.testing.assert_close(w.double(), ref, rtol=1e-6, atol=1e-6)


def test_a_cached_copy_is_returned_again_without_merging() -> None:
    cache = MergedCache(make_model(), 10 * BOTH)
    first = cache.get_or_merge("a", make_adapter())
    assert cache.get("a") is first
    assert cache.get_or_merge("a", make_adapter(seed=9)) is first
    assert "a" in cache


def test_another_version_is_a_miss() -> None:
    cache = MergedCache(make_model(), 10 * BOTH)
    cache.get_or_merge("a", make_adapter())
    assert cache.get("b") is None
    assert "b" not in cache


def test_cache_evicts_the_least_recently_used_to_stay_within_budget() -> None:
    cache = MergedCache(make_model(), 2 * BOTH)
    for name in "abc":
        cache.get_or_merge(name, make_adapter(seed=ord(name)))
    assert "a" not in cache
    assert "b" in cache and "c" in cache
    assert cache._bytes == 2 * BOTH


def test_a_read_makes_an_entry_recently_used() -> None:
    cache = MergedCache(make_model(), 2 * BOTH)
    cache.get_or_merge("a", make_adapter(seed=1))
    cache.get_or_merge("b", make_adapter(seed=2))
    assert cache.get("a") is not None  # now b is the oldest
    cache.get_or_merge("c", make_adapter(seed=3))
    assert "a" in cache and "c" in cache
    assert "b" not in cache


def test_evicting_frees_as_many_entries_as_the_new_one_needs() -> None:
    cache = MergedCache(make_model(), BOTH + 2 * LAYER2)
    cache.get_or_merge("small1", make_adapter(("layer2",), seed=1))
    cache.get_or_merge("small2", make_adapter(("layer2",), seed=2))
    cache.get_or_merge("big", make_adapter(seed=3))
    assert cache._bytes == BOTH + 2 * LAYER2
    cache.get_or_merge("big2", make_adapter(seed=4))  # only fits once all three are gone
    assert "big" not in cache
    assert "small1" not in cache and "small2" not in cache
    assert "big2" in cache
    assert cache._bytes == BOTH


def test_a_copy_larger_than_the_budget_is_returned_but_not_kept() -> None:
    cache = MergedCache(make_model(), BOTH - 1)
    cache.get_or_merge("small", make_adapter(("layer2",)))
    weights = cache.get_or_merge("big", make_adapter())
    assert set(weights) == {"layer1", "layer2"}
    assert "big" not in cache
    assert "small" in cache  # a copy that can never fit evicts nothing
    assert cache._bytes == LAYER2


def test_a_copy_exactly_the_budget_is_kept() -> None:
    cache = MergedCache(make_model(), BOTH)
    cache.get_or_merge("a", make_adapter())
    assert "a" in cache
    assert cache._bytes == BOTH


def test_forget_frees_the_bytes() -> None:
    cache = MergedCache(make_model(), 2 * BOTH)
    cache.get_or_merge("a", make_adapter(seed=1))
    cache.get_or_merge("b", make_adapter(seed=2))
    cache.forget("a")
    assert "a" not in cache
    assert cache._bytes == BOTH
    cache.get_or_merge("c", make_adapter(seed=3))
    assert "b" in cache and "c" in cache
    cache.forget("missing")  # a no-op
    assert cache._bytes == 2 * BOTH


def test_forget_frees_exactly_that_entrys_bytes() -> None:
    cache = MergedCache(make_model(), 2 * BOTH)
    cache.get_or_merge("big", make_adapter(seed=1))
    cache.get_or_merge("small", make_adapter(("layer2",), seed=2))
    cache.forget("small")
    assert cache._bytes == BOTH
    cache.forget("big")
    assert cache._bytes == 0
