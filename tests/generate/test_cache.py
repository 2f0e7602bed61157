"""The KV cache's growth: old contents kept, and memory within the budget plus one tensor."""

from __future__ import annotations

import itertools
import weakref
from typing import Any

import pytest
import torch
from torch import Tensor

from app.generate import cache as cache_module
from app.generate.cache import KVCache

LAYERS, KV_HEADS, HEAD_DIM = 4, 2, 8
BYTES_PER_TOKEN = 2 * LAYERS * KV_HEADS * HEAD_DIM * 4  # K and V of every layer, float32


class _Counted:
    """`torch` as the cache module sees it, counting the bytes of the tensors it allocates
    that are still alive, and the most that ever were at once."""

    def __init__(self) -> None:
        self.live: dict[int, int] = {}
        self.peak = 0
        self._keys = itertools.count()

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    def zeros(self, *args: Any, **kwargs: Any) -> Tensor:
        return self._count(torch.zeros(*args, **kwargs))

    def empty(self, *args: Any, **kwargs: Any) -> Tensor:
        return self._count(torch.empty(*args, **kwargs))

    def _count(self, tensor: Tensor) -> Tensor:
        key = next(self._keys)
        self.live[key] = tensor.untyped_storage().nbytes()
        weakref.finalize(tensor, self.live.pop, key)  # when its last reference goes
        self.peak = max(self.peak, sum(self.live.values()))
        return tensor


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> _Counted:
    counting = _Counted()
    monkeypatch.setattr(cache_module, "torch", counting)
    return counting


def new_cache(budget_bytes: int = 1 << 30) -> KVCache:
    return KVCache(LAYERS, KV_HEADS, HEAD_DIM, torch.float32, torch.device("cpu"),
                   budget_bytes, max_slots=16, max_length=1024)  # fmt: skip


def test_growth_peaks_at_the_new_size_plus_one_old_tensor(counted: _Counted) -> None:
    cache = new_cache()
    cache.allocate(64)  # (4 slots, 64 tokens): 16 KiB a tensor, 128 KiB in all
    one_old = cache.k[0].nbytes
    old = cache.nbytes
    counted.peak = 0
    cache.allocate(500)  # (4 slots, 512 tokens): 1 MiB in all
    assert cache.nbytes == 8 * old and sum(counted.live.values()) == cache.nbytes
    # All new tensors before freeing the old ones peaked at old + new.
    assert counted.peak <= cache.nbytes + one_old < cache.nbytes + old


def test_growth_to_the_budget_never_holds_more_than_the_budget_and_a_tensor(
    counted: _Counted,
) -> None:
    budget = 8 * 512 * BYTES_PER_TOKEN  # exactly 8 slots of 512 tokens
    cache = new_cache(budget)
    for _ in range(4):
        cache.allocate(200)  # (4 slots, 256 tokens): half the budget
    one_old = cache.k[0].nbytes
    assert cache.fits(512)
    cache.allocate(512)  # a fifth sequence, longer: (8 slots, 512 tokens), the whole budget
    assert cache.nbytes == budget
    assert counted.peak <= budget + one_old


def test_growth_keeps_what_the_cache_held() -> None:
    cache = new_cache()
    for _ in range(4):
        cache.allocate(60)
    gen = torch.Generator().manual_seed(0)
    for t in (*cache.k, *cache.v):
        t.copy_(torch.randn(t.shape, generator=gen))
    before = [t.clone() for t in (*cache.k, *cache.v)]
    slots, length = cache.slots, cache.length
    cache.allocate(300)  # more slots and a longer length at once
    assert cache.slots > slots and cache.length > length
    for old, new in zip(before, (*cache.k, *cache.v), strict=True):
        assert torch.equal(new[:slots, :, :length], old)
        assert not new[slots:].any() and not new[:, :, length:].any()
