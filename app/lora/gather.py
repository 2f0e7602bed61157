"""Rows of a tensor by index, fast for 16-bit floats on the CPU.

torch's CPU `index_select` copies the rows of a 2-d int16 or float32 tensor with a fast path,
but those of bf16 or fp16 (or of any tensor over two dimensions) element by element: 3.6 ms
against 7 us for 64 rows of 576 bf16, 11 ms against 21 us for a decode step's keys of one
layer. The same bytes seen as int16 take the fast path, and a copy changes no bit.
"""

from __future__ import annotations

import torch
from torch import Tensor

_HALF = (torch.bfloat16, torch.float16)


def as_bits(x: Tensor) -> Tensor:
    """A 2-d tensor as the rows `index_select` copies fast (the same bytes, for 16-bit floats)."""
    return x.view(torch.int16) if x.dtype in _HALF and x.device.type == "cpu" else x


def take_rows(x: Tensor, index: Tensor, out: Tensor | None = None) -> Tensor:
    """x[index] along the first dimension (into `out` when given, of that shape)."""
    shape = (len(index), *x.shape[1:])
    if out is None:
        out = x.new_empty(shape)
    flat = x.reshape(x.shape[0], -1)  # a view when x is contiguous
    torch.index_select(as_bits(flat), 0, index, out=as_bits(out.view(len(index), -1)))
    return out
