"""Composition keys and the cache of composed adapters (app.engine.compositions)."""

from __future__ import annotations

import pytest
import torch

from app.engine.compositions import Compositions, composition_key, contains, parts_of
from app.lora import LoraAdapter, LoraConfig, LoraModule

V1, V2 = "a" * 64, "b" * 64


def test_a_key_is_canonical() -> None:
    assert composition_key([(V2, 0.5), (V1, -1.0)]) == composition_key([(V1, -1.0), (V2, 0.5)])
    assert composition_key([(V1, 0.25), (V1, 0.75)]) == V1  # summed to scale 1: the version
    assert composition_key([(V1, 0.5), (V2, 0.0)]) == f"{V1}*0.5"  # zero scales dropped
    assert composition_key([(V1, 0.0)]) is None and composition_key([]) is None  # the base
    key = composition_key([(V1, 0.1), (V2, -3.0)])
    assert key is not None and parts_of(key) == ((V1, 0.1), (V2, -3.0))
    assert parts_of(V1) is None and contains(key, V2) and not contains(V1, V1)


def _adapter(seed: int) -> LoraAdapter:
    gen = torch.Generator().manual_seed(seed)
    module = LoraModule(torch.randn(2, 6, generator=gen), torch.randn(4, 2, generator=gen), 2.0)
    return LoraAdapter(LoraConfig(2, 4.0, ("l",)), {"l": module})


def test_composed_adapters_are_kept_within_their_budget_and_forgotten() -> None:
    adapters = {V1: _adapter(1), V2: _adapter(2)}
    loads: list[str] = []

    def load(version: str, param: str):
        loads.append(version)
        return object(), adapters[version]

    one = _adapter(0).nbytes * 2  # a composition of two rank-2 adapters: rank 4
    cache = Compositions(load, ["l"], max_bytes=one)
    key = composition_key([(V1, 0.5), (V2, 2.0)])
    assert key is not None
    _, composed = cache.load(key, "adapter")
    m = composed.modules["l"]
    expected = sum(
        w * a.modules["l"].scaling * a.modules["l"].lora_B @ a.modules["l"].lora_A
        for a, w in ((adapters[V1], 0.5), (adapters[V2], 2.0))
    )
    torch.testing.assert_close(m.scaling * m.lora_B @ m.lora_A, expected)
    assert cache.load(key, "adapter")[1] is composed and loads == [V1, V2]  # kept
    other = composition_key([(V1, 1.0), (V2, 1.0)])
    assert other is not None
    cache.load(other, "adapter")
    assert cache.nbytes <= one and cache.load(key, "adapter")[1] is not composed  # evicted
    assert cache.forget(V2) and cache.nbytes == 0


def test_resolving_a_composition_loads_its_sources_and_makes_nothing() -> None:
    adapters = {V1: _adapter(1), V2: _adapter(2)}
    loads: list[str] = []

    def load(version: str, param: str):
        if version not in adapters:
            raise KeyError(f"{param}: {version}")  # the registry's 404, here a KeyError
        loads.append(version)
        return version, adapters[version]

    cache = Compositions(load, ["l"], max_bytes=1 << 20)
    key = composition_key([(V1, 0.5), (V2, 2.0)])
    assert key is not None
    # Rows on vectors take each source's terms: a concatenated adapter per new composition
    # would cost more than their forward (bench/compose.py).
    other = composition_key([(V1, 1.0), (V2, -1.0)])
    assert other is not None
    resolved = cache.resolve([key, other, V2], "adapter")
    assert resolved == {key: (V1, None), other: (V1, None), V2: (V2, adapters[V2])}
    assert loads == [V1, V2] and cache.nbytes == 0  # each source loaded once, nothing made
    _, made = cache.load(key, "adapter")
    assert cache.resolve([key], "adapter") == {key: (V1, made)}  # once made, handed out
    unknown = composition_key([(V1, 0.5), ("c" * 64, 1.0)])
    assert unknown is not None
    with pytest.raises(KeyError, match="adapters"):
        cache.resolve([unknown], "adapters")
