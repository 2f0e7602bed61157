"""Rows on compositions in one stacked batch: each row gets what its composition's concatenated
adapter (compose "cat", checked against PEFT in test_compose.py) gives it alone."""

from __future__ import annotations

import random

import pytest
import torch

from app.lora import AdapterStack, MixedBatch, StackedBatch, unmerged_linear
from app.lora.compose import compose
from app.lora.composed import Entries
from app.lora.layers import DeltaPlan
from support.helpers import forward
from support.lora import SIZES, make_adapter, make_model

ORDER = ["layer1", "layer2"]


def _alone(model, adapters, parts, x_row):
    if not parts:
        return forward(model, None, x_row)
    cat = compose([(adapters[k], s) for k, s in parts], "cat", ORDER)
    return forward(model, unmerged_linear(cat), x_row)


@pytest.mark.parametrize("seed", range(6))
def test_every_row_gets_its_composition_alone(seed: int) -> None:
    rng = random.Random(seed)
    model = make_model()
    targets = [("layer1", "layer2"), ("layer1",), ("layer2",)]
    adapters = {
        f"a{i}": make_adapter(model, rng.choice([1, 2, 4, 8, 16]), rng.choice(targets), seed=i)
        for i in range(rng.randint(2, 30))
    }
    names = list(adapters)
    rows = rng.choice([1, 7, 64, 200])
    row_parts = [
        [(k, rng.choice([0.5, -1.0, 2.0, 1.0])) for k in rng.sample(names, rng.randint(0, 3))]
        for _ in range(rows)
    ]
    entries = Entries.of(row_parts)
    x = torch.randn(rows, SIZES[0])
    with torch.inference_mode():
        out = forward(
            model, StackedBatch.of_entries(entries, AdapterStack.build(adapters)).linear(), x
        )
        for row, parts in enumerate(row_parts):
            alone = _alone(model, adapters, parts, x[row : row + 1])
            torch.testing.assert_close(out[row : row + 1], alone, rtol=1e-5, atol=1e-5)


def test_entries_through_a_sorted_plan_equal_the_stacked_one() -> None:
    model = make_model()
    adapters = {f"a{i}": make_adapter(model, 2 + i, ("layer1", "layer2"), seed=i) for i in range(4)}
    row_parts = [[("a0", 0.5), ("a3", -2.0)], [], [("a1", 1.0)], [("a0", 3.0), ("a2", 0.25)]]
    entries = Entries.of(row_parts)
    x = torch.randn(len(row_parts), SIZES[0])
    sorted_terms = MixedBatch.build(entries.keys, adapters).linear()

    def add(name, xs, y):  # the plain path over the entries' rows, in their order
        batch = MixedBatch.build(entries.keys, adapters)
        out = batch.sort(y.new_zeros(y.shape))
        sorted_terms.add(name, batch.sort(xs), out)
        y.add_(batch.unsort(out))

    with torch.inference_mode():
        plain = forward(model, entries.linear(DeltaPlan(add), x.device), x)
        stacked = forward(
            model, StackedBatch.of_entries(entries, AdapterStack.build(adapters)).linear(), x
        )
    torch.testing.assert_close(stacked, plain, rtol=1e-5, atol=1e-5)


def test_a_rows_term_is_scaled_at_rank_width_and_padding_adds_nothing() -> None:
    model = make_model()
    adapters = {f"a{i}": make_adapter(model, 2, ("layer1",), seed=i) for i in range(3)}
    # a0 on 3 rows, a1 on 1: a1's slot is padded to 3 rows, a2's slot is all padding
    entries = Entries.of([[("a0", 2.0), ("a1", -1.0)], [("a0", 0.5)], [("a0", 1.0)]])
    batch = StackedBatch.of_entries(entries, AdapterStack.build(adapters))
    ((_, ix),) = batch.plan("layer1", SIZES[1])
    assert ix.height == 3 and ix.scales is not None
    assert ix.scales.flatten().tolist() == [2.0, 0.5, 1.0, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert ix.gather.tolist()[:4] == [0, 1, 2, 0] and ix.rows.tolist() == [0, 1, 2, 0]


def test_a_key_on_every_row_is_not_indexed_and_keeps_its_scales() -> None:
    model = make_model()
    adapters = {"a0": make_adapter(model, 2, ("layer1",), seed=0)}
    entries = Entries.of([[("a0", 0.5)], [("a0", -3.0)]])
    batch = StackedBatch.of_entries(entries, AdapterStack.build(adapters))
    ((_, ix),) = batch.plan("layer1", SIZES[1])
    ((slot, rows, scales),) = ix.tall
    assert slot == 0 and rows is None and scales.flatten().tolist() == [0.5, -3.0]
    # a row with no entry: the key is on every entry but not on every row
    entries = Entries.of([[("a0", 0.5)], [], [("a0", -3.0)]])
    ((_, ix),) = StackedBatch.of_entries(entries, AdapterStack.build(adapters)).plan(
        "layer1", SIZES[1]
    )
    ((_, rows, _),) = ix.tall
    assert rows.tolist() == [0, 2]
