"""The stacked (SGMV-style) mixed path against the plain reference path."""

from __future__ import annotations

import random

import pytest
import torch

from app.lora import AdapterStack, MixedBatch, StackedBatch, rank_bucket, unmerged_linear
from tests.lora.test_ops import SIZES, make_adapter, make_model


def both(model, keys, adapters, x):
    plain = MixedBatch.build(keys, adapters)
    fast = StackedBatch.build(keys, AdapterStack.build(adapters))
    with torch.inference_mode():
        ref = plain.unsort(model(plain.sort(x), linear=plain.linear()))
        out = model(x, linear=fast.linear())
    return out, ref


@pytest.mark.parametrize("seed", range(6))
def test_random_mixed_batches_equal_the_plain_path(seed: int) -> None:
    rng = random.Random(seed)
    model = make_model()
    targets = [("layer1", "layer2"), ("layer1",), ("layer2",)]
    adapters = {
        f"a{i}": make_adapter(model, rng.choice([1, 2, 4, 8, 16, 64]), rng.choice(targets), seed=i)
        for i in range(rng.randint(1, 40))
    }
    rows = rng.choice([1, 7, 64, 256])
    # Zipf-like popularity, so some segments are far taller than others.
    weights = [1 / (i + 1) for i in range(len(adapters))] + [0.3]
    keys = rng.choices([*adapters, None], weights=weights, k=rows)
    x = torch.randn(rows, SIZES[0])
    out, ref = both(model, keys, adapters, x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_each_row_gets_its_own_adapter() -> None:
    model = make_model()
    adapters = {f"a{i}": make_adapter(model, 4, ("layer1", "layer2"), seed=i) for i in range(5)}
    keys = ["a3", None, "a0", "a3", "a4", "a1", "a1", "a2", None, "a0"]
    x = torch.randn(len(keys), SIZES[0])
    out, _ = both(model, keys, adapters, x)
    for row, key in enumerate(keys):
        alone = model(x[row : row + 1], linear=unmerged_linear(adapters[key] if key else None))
        torch.testing.assert_close(out[row : row + 1], alone, rtol=1e-5, atol=1e-5)


def test_no_adapters_is_the_base() -> None:
    model = make_model()
    x = torch.randn(3, SIZES[0])
    out = model(x, linear=StackedBatch.build([None] * 3, AdapterStack.build({})).linear())
    torch.testing.assert_close(out, model(x))


def test_a_hot_adapter_goes_alone_and_does_not_pad_the_blocks() -> None:
    model = make_model()
    adapters = {f"a{i}": make_adapter(model, 2, ("layer1",), seed=i) for i in range(8)}
    keys = ["a0"] * 100 + [f"a{i}" for i in range(1, 8)]
    batch = StackedBatch.build(keys, AdapterStack.build(adapters))
    blocks, singles = batch.layers["layer1"]
    assert len(singles) == 1 and len(blocks) == 1 and blocks[0].height == 1
    x = torch.randn(len(keys), SIZES[0])
    out, ref = both(model, keys, adapters, x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_a_stack_serves_batches_that_use_only_some_of_its_adapters() -> None:
    model = make_model()
    adapters = {f"a{i}": make_adapter(model, 2 + i, ("layer1", "layer2"), seed=i) for i in range(6)}
    stack = AdapterStack.build(adapters)
    keys = ["a1", None, "a4", "a1"]
    x = torch.randn(len(keys), SIZES[0])
    out = model(x, linear=StackedBatch.build(keys, stack).linear())
    plain = MixedBatch.build(keys, adapters)
    ref = plain.unsort(model(plain.sort(x), linear=plain.linear()))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_ranks_are_grouped_in_power_of_two_buckets() -> None:
    assert [rank_bucket(r) for r in (1, 2, 3, 4, 5, 16, 17, 64)] == [1, 2, 4, 4, 8, 16, 32, 64]
    model = make_model()
    adapters = {f"a{r}": make_adapter(model, r, ("layer1",), seed=r) for r in (1, 3, 4, 64)}
    buckets = AdapterStack.build(adapters).layers["layer1"]
    assert sorted(b.a_t.shape[2] for b in buckets) == [1, 4, 64]
