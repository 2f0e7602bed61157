"""Mixed-adapter batches equal each row run alone."""

from __future__ import annotations

import random

import torch

from app.lora import MixedBatch, unmerged_linear
from support.helpers import forward
from support.lora import SIZES, longhand, make_adapter, make_model


def test_mixed_batch_of_256_rows_over_32_adapters_equals_each_row_alone() -> None:
    model = make_model()
    ranks = [1, 2, 4, 8, 16, 32, 64]
    targets = [("layer1", "layer2"), ("layer1",), ("layer2",)]
    adapters = {
        f"a{i}": make_adapter(model, ranks[i % len(ranks)], targets[i % len(targets)], seed=i)
        for i in range(32)
    }
    rng = random.Random(0)
    keys: list[str | None] = [rng.choice([*adapters, None]) for _ in range(256)]
    x = torch.randn(256, SIZES[0])
    batch = MixedBatch.build(keys, adapters)
    with torch.inference_mode():
        out = batch.unsort(forward(model, batch.linear(), batch.sort(x)))
        for row, key in enumerate(keys):
            adapter = None if key is None else adapters[key]
            alone = forward(model, unmerged_linear(adapter), x[row : row + 1])
            torch.testing.assert_close(out[row : row + 1], alone, rtol=1e-5, atol=1e-5)
            ref = longhand(model, x[row : row + 1], adapter)
            torch.testing.assert_close(out[row : row + 1].double(), ref, rtol=1e-5, atol=1e-5)


def test_segments_group_rows_in_order_of_first_appearance() -> None:
    model = make_model()
    adapters = {
        "a": make_adapter(model, 2, ("layer1",), 0),
        "b": make_adapter(model, 2, ("layer1",), 1),
    }
    batch = MixedBatch.build(["b", None, "a", "b", None], adapters)
    assert [(s.key, s.start, s.stop) for s in batch.segments] == [
        ("b", 0, 2),
        (None, 2, 4),
        ("a", 4, 5),
    ]
    rows = torch.arange(5).unsqueeze(1).float()
    assert batch.sort(rows).squeeze(1).tolist() == [0, 3, 1, 4, 2]
    assert torch.equal(batch.unsort(batch.sort(rows)), rows)


def test_already_grouped_rows_are_not_permuted() -> None:
    model = make_model()
    adapters = {"a": make_adapter(model, 2, ("layer1",), 0)}
    batch = MixedBatch.build(["a", "a", None], adapters)
    assert batch.order is None
    x = torch.randn(3, SIZES[0])
    assert batch.sort(x) is x


def test_the_sort_order_lives_on_the_requested_device() -> None:
    model = make_model()
    adapters = {"a": make_adapter(model, 2, ("layer1",), 0)}
    meta = torch.device("meta")
    batch = MixedBatch.build(["a", None, "a"], adapters, meta)
    assert batch.order.device == meta and batch.inverse.device == meta
    assert batch.order.dtype == torch.long
