"""Prediction inputs: shape, row count, finiteness and per-row adapter names, checked up front."""

from __future__ import annotations

import pytest
import torch

from app.engine.inputs import check_rows, row_adapters
from app.errors import InvalidInput, InvalidName


def test_rows_of_the_right_shape_pass_unchanged() -> None:
    x = torch.randn(3, 16)
    assert check_rows(x, 16, 3) is x
    assert check_rows(x[:1], 16, 1).shape == (1, 16)


@pytest.mark.parametrize("shape", [(0, 16), (16,), (2, 15), (2, 17), (1, 2, 16)])
def test_rows_of_the_wrong_shape_are_invalid_input(shape: tuple[int, ...]) -> None:
    with pytest.raises(InvalidInput) as info:
        check_rows(torch.zeros(shape), 16, 8)
    assert info.value.status == 422 and info.value.code == "invalid_input"
    assert info.value.param == "inputs"
    assert str(tuple(shape)) in info.value.message and "(N, 16) with 1 <= N <= 8" in str(info.value)


def test_more_rows_than_max_rows_are_invalid_input() -> None:
    with pytest.raises(InvalidInput) as info:
        check_rows(torch.zeros(9, 16), 16, 8)
    assert info.value.param == "inputs"
    assert "9 rows" in info.value.message and "1 <= N <= 8" in info.value.message


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_value_names_its_row(bad: float) -> None:
    x = torch.zeros(4, 16)
    x[2, 5] = bad
    x[3, 0] = bad
    with pytest.raises(InvalidInput) as info:
        check_rows(x, 16, 8)
    assert info.value.param == "inputs"
    assert info.value.message == (  # names the first bad row, and what is allowed
        "inputs row 2 holds NaN, inf or a value beyond float32 (|x| > 3.4e38); "
        "values must be finite float32"
    )


def test_one_adapter_applies_to_every_row() -> None:
    assert row_adapters("a", None, 3) == (["a", "a", "a"], "adapter")
    assert row_adapters(None, None, 2) == ([None, None], "adapter")


def test_per_row_adapters_come_back_as_a_list() -> None:
    names = ("a", None, "b")
    assert row_adapters(None, names, 3) == (["a", None, "b"], "adapters")


def test_adapter_and_adapters_together_are_invalid_input() -> None:
    with pytest.raises(InvalidInput) as info:
        row_adapters("a", ["a"], 1)
    assert info.value.code == "invalid_input" and info.value.param == "adapters"
    assert info.value.message == "give either `adapter` or `adapters`, not both"


@pytest.mark.parametrize("n", [2, 4])
def test_adapters_need_one_entry_per_row(n: int) -> None:
    with pytest.raises(InvalidInput) as info:
        row_adapters(None, ["a", "b", "c"], n)
    assert info.value.param == "adapters"
    assert "3 entries" in info.value.message and f"({n})" in info.value.message


def test_a_bad_adapter_name_is_invalid_name_on_its_field() -> None:
    with pytest.raises(InvalidName) as info:
        row_adapters("../etc", None, 1)
    assert info.value.code == "invalid_name" and info.value.param == "adapter"
    with pytest.raises(InvalidName) as info:
        row_adapters(None, ["ok", None, "a/b"], 3)
    assert info.value.param == "adapters"
