"""take_rows: the rows x[index] bit for bit, in every dtype and shape the engine gathers."""

from __future__ import annotations

import pytest
import torch

from app.lora.gather import take_rows


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("shape", [(9,), (9, 5), (9, 4, 3, 2)])
def test_rows_equal_indexing_bit_for_bit(dtype, shape) -> None:
    x = torch.randn(shape).to(dtype)
    x.view(-1)[3] = float("nan")  # NaNs and infinities are bytes like any other
    x.view(-1)[4] = float("-inf")
    index = torch.tensor([8, 0, 3, 3, 1])
    got = take_rows(x, index)
    assert got.dtype == dtype and got.shape == (5, *shape[1:])
    want = x[index]
    assert torch.equal(got.reshape(5, -1).view(torch.uint8), want.reshape(5, -1).view(torch.uint8))


def test_rows_into_a_given_tensor() -> None:
    x = torch.randn(6, 4, 2).to(torch.bfloat16)
    out = torch.empty(2, 4, 2, dtype=torch.bfloat16)
    assert take_rows(x, torch.tensor([5, 2]), out=out) is out
    assert torch.equal(out, x[[5, 2]])


def test_a_non_contiguous_tensor_is_read_right() -> None:
    x = torch.randn(5, 8).to(torch.bfloat16)[:, ::2]
    assert torch.equal(take_rows(x, torch.tensor([4, 1])), x[[4, 1]])
