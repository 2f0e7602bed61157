"""The stacked (SGMV-style) mixed path against the plain reference path."""

from __future__ import annotations

import random

import pytest
import torch

from app.lora import AdapterStack, MixedBatch, StackedBatch, rank_bucket, unmerged_linear
from support.helpers import forward
from support.lora import SIZES, make_adapter, make_model


def both(model, keys, adapters, x):
    plain = MixedBatch.build(keys, adapters)
    fast = StackedBatch.build(keys, AdapterStack.build(adapters))
    with torch.inference_mode():
        ref = plain.unsort(forward(model, plain.linear(), plain.sort(x)))
        out = forward(model, fast.linear(), x)
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
        alone = forward(model, unmerged_linear(adapters[key] if key else None), x[row : row + 1])
        torch.testing.assert_close(out[row : row + 1], alone, rtol=1e-5, atol=1e-5)


def test_no_adapters_is_the_base() -> None:
    model = make_model()
    x = torch.randn(3, SIZES[0])
    out = forward(model, StackedBatch.build([None] * 3, AdapterStack.build({})).linear(), x)
    torch.testing.assert_close(out, model(x))


def test_a_hot_adapter_goes_alone_and_does_not_pad_the_blocks() -> None:
    model = make_model()
    adapters = {f"a{i}": make_adapter(model, 2, ("layer1",), seed=i) for i in range(8)}
    keys = ["a0"] * 100 + [f"a{i}" for i in range(1, 8)]
    batch = StackedBatch.build(keys, AdapterStack.build(adapters))
    ((_, ix),) = batch.plan("layer1", SIZES[1])
    assert len(ix.tall) == 1 and ix.gather is not None and ix.height == 1
    x = torch.randn(len(keys), SIZES[0])
    out, ref = both(model, keys, adapters, x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_a_stack_serves_batches_that_use_only_some_of_its_adapters() -> None:
    model = make_model()
    adapters = {f"a{i}": make_adapter(model, 2 + i, ("layer1", "layer2"), seed=i) for i in range(6)}
    stack = AdapterStack.build(adapters)
    keys = ["a1", None, "a4", "a1"]
    x = torch.randn(len(keys), SIZES[0])
    out = forward(model, StackedBatch.build(keys, stack).linear(), x)
    plain = MixedBatch.build(keys, adapters)
    ref = plain.unsort(forward(model, plain.linear(), plain.sort(x)))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_ranks_are_grouped_in_power_of_two_buckets() -> None:
    assert [rank_bucket(r) for r in (1, 2, 3, 4, 5, 16, 17, 64)] == [1, 2, 4, 4, 8, 16, 32, 64]
    model = make_model()
    adapters = {f"a{r}": make_adapter(model, r, ("layer1",), seed=r) for r in (1, 3, 4, 64)}
    buckets = AdapterStack.build(adapters).buckets(("layer1",), (slice(0, SIZES[1]),))
    assert sorted(b.a_t.shape[2] for b in buckets) == [1, 4, 64]


def plan(counts: dict[str, int], n_adapters: int | None = None) -> tuple[list[str], list[str]]:
    """Which adapters of layer1 go alone (plain products) and which into padded blocks."""
    n_adapters = n_adapters or len(counts)
    model = make_model()
    adapters = {f"a{i}": make_adapter(model, 2, ("layer1",), seed=i) for i in range(n_adapters)}
    keys = [key for key, n in counts.items() for _ in range(n)]
    batch = StackedBatch.build(keys, AdapterStack.build(adapters))
    ((bucket, ix),) = batch.plan("layer1", SIZES[1])
    alone = sorted(bucket.slots[s] for s, _, _ in ix.tall)
    blocked = []
    if ix.gather is not None:
        taken = range(len(ix.gather)) if ix.slots is None else ix.slots.tolist()
        blocked = sorted({bucket.slots[p // ix.height] for p in taken})
    return alone, blocked


def test_a_segment_over_twice_the_mean_goes_alone_and_one_at_twice_stays() -> None:
    # 80 rows over 8 adapters: the mean is 10, so 20 rows still pad the blocks and 40 do not.
    counts = {"a0": 40, "a1": 20, "a2": 10, **{f"a{i}": 2 for i in range(3, 8)}}
    alone, blocked = plan(counts)
    assert alone == ["a0"]
    assert blocked == sorted(f"a{i}" for i in range(1, 8))


def test_the_tall_threshold_is_never_below_4_rows() -> None:
    assert plan({"a0": 4, **{f"a{i}": 1 for i in range(1, 8)}}) == ([], [f"a{i}" for i in range(8)])
    assert plan({"a0": 5, **{f"a{i}": 1 for i in range(1, 8)}})[0] == ["a0"]


def test_a_segment_between_twice_and_three_times_the_mean_goes_alone() -> None:
    alone, blocked = plan({"a0": 25, "a1": 5, "a2": 5, "a3": 5})  # mean 10
    assert alone == ["a0"] and blocked == ["a1", "a2", "a3"]


def test_a_lone_adapter_of_a_bucket_always_goes_alone() -> None:
    assert plan({"a0": 2}, n_adapters=2) == (["a0"], [])


def test_few_of_a_buckets_adapters_in_use_go_alone() -> None:
    # Blocks read every slot's weights: worth it only when over a quarter of the slots are used.
    assert plan({"a0": 1, "a1": 1}, n_adapters=9) == (["a0", "a1"], [])
    assert plan({"a0": 1, "a1": 1}, n_adapters=8) == ([], ["a0", "a1"])


def test_a_segment_on_every_row_is_not_indexed() -> None:
    model = make_model()
    adapters = {f"a{i}": make_adapter(model, 2, ("layer1",), seed=i) for i in range(2)}
    stack = AdapterStack.build(adapters)
    ((_, ix),) = StackedBatch.build(["a0"] * 5, stack).plan("layer1", SIZES[1])
    assert ix.tall == ((0, None, None),)
    ((_, ix),) = StackedBatch.build(["a0", None, "a0"], stack).plan("layer1", SIZES[1])
    ((_, rows, _),) = ix.tall
    assert rows.tolist() == [0, 2]


def test_blocks_pad_short_slots_with_row_0() -> None:
    model = make_model()
    adapters = {f"a{i}": make_adapter(model, 2, ("layer1",), seed=i) for i in range(2)}
    batch = StackedBatch.build(["a1", "a0", "a1"], AdapterStack.build(adapters))
    ((_, block),) = batch.plan("layer1", SIZES[1])
    assert block.height == 2 and block.tall == ()
    assert block.gather.tolist() == [1, 0, 0, 2]  # slot a0: row 1 + padding; slot a1: rows 0, 2
    assert block.slots.tolist() == [0, 2, 3] and block.rows.tolist() == [1, 0, 2]


def test_blocks_with_no_padding_put_rows_back_without_a_gather() -> None:
    model = make_model()
    adapters = {f"a{i}": make_adapter(model, 2, ("layer1",), seed=i) for i in range(2)}
    batch = StackedBatch.build(["a1", "a0"], AdapterStack.build(adapters))
    ((_, block),) = batch.plan("layer1", SIZES[1])
    assert block.gather.tolist() == [1, 0] and block.slots is None
    assert block.rows.tolist() == [1, 0]


def test_index_tensors_live_on_the_requested_device() -> None:
    model = make_model()
    adapters = {f"a{i}": make_adapter(model, 2, ("layer1",), seed=i) for i in range(3)}
    stack = AdapterStack.build(adapters)
    keys = ["a1", "a0", "a1", None, "a2"]
    ((_, block),) = StackedBatch.build(keys, stack).plan("layer1", SIZES[1])
    assert block.gather.device.type == "cpu"
    meta = torch.device("meta")
    ((_, block),) = StackedBatch.build(keys, stack, meta).plan("layer1", SIZES[1])
    for t in (block.gather, block.slots, block.rows):
        assert t.device == meta and t.dtype == torch.long
    ((_, single),) = StackedBatch.build(["a0", None], stack, meta).plan("layer1", SIZES[1])
    ((_, rows, _),) = single.tall
    assert rows.device == meta


def test_a_batch_serves_again_only_the_same_rows_on_the_same_stack() -> None:
    model = make_model()
    adapters = {f"a{i}": make_adapter(model, 2, ("layer1",), seed=i) for i in range(3)}
    stack = AdapterStack.build(adapters)
    keys = ["a1", None, "a2"]
    batch = StackedBatch.build(keys, stack)
    assert batch.serves(list(keys), stack)
    assert not batch.serves(["a2", None, "a1"], stack)
    assert not batch.serves([*keys, "a0"], stack)
    assert not batch.serves(keys, AdapterStack.build(adapters))
