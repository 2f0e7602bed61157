"""The KV cache: one slot per running sequence, every layer's keys and values, bounded in bytes.

Each layer holds K and V as (slots, kv_heads, length, head_dim). A decode step attends over all
slots at once (one batched attention, no copy of the cache), masking each slot past its own
length. The tensors grow (by copying) when a sequence needs a slot or a length they lack, and
are dropped when the last sequence leaves; `fits` is the admission rule, and it counts the
bytes those tensors would really take, so the bound is never exceeded.
"""

from __future__ import annotations

import torch
from torch import Tensor

_SLOT_STEP = 4  # slots are added four at a time
_LENGTH_STEP = 64  # and length 64 tokens at a time, so growth (a copy) is rare


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


class KVCache:
    """Keys and values of the running sequences; used by the engine's thread alone."""

    def __init__(
        self,
        layers: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
        budget_bytes: int,
        max_slots: int,
        max_length: int,
    ) -> None:
        self.layers, self.kv_heads, self.head_dim = layers, kv_heads, head_dim
        self.dtype, self.device = dtype, device
        self.budget_bytes = budget_bytes
        self.max_slots, self.max_length = max_slots, max_length
        element = torch.empty((), dtype=dtype).element_size()
        self.bytes_per_token = 2 * layers * kv_heads * head_dim * element
        self.k: list[Tensor] = []
        self.v: list[Tensor] = []
        self.slots = 0  # allocated slots
        self.length = 0  # allocated tokens per slot
        self._free: list[int] = []
        self._used: dict[int, int] = {}  # slot -> tokens it reserved

    @property
    def nbytes(self) -> int:
        return self.slots * self.length * self.bytes_per_token

    @property
    def used_slots(self) -> int:
        return len(self._used)

    def _shape_for(self, tokens: int) -> tuple[int, int]:
        """The allocation that would hold the running sequences plus one of `tokens`."""
        need_slots = max(self.slots, len(self._used) + 1) if not self._free else self.slots
        need_length = max(self.length, tokens)
        slots = min(_round_up(need_slots, _SLOT_STEP), self.max_slots)
        length = min(_round_up(need_length, _LENGTH_STEP), self.max_length)
        return slots, max(length, tokens)

    def capacity_tokens(self) -> int:
        """The longest sequence the budget could ever hold alone."""
        return min(self.budget_bytes // self.bytes_per_token, self.max_length)

    def fits(self, tokens: int) -> bool:
        """Whether a sequence reserving `tokens` can join now, within the byte budget."""
        if len(self._used) >= self.max_slots:
            return False
        slots, length = self._shape_for(tokens)
        if slots * length * self.bytes_per_token <= self.budget_bytes:
            return True
        # Without the rounding it may still fit exactly.
        slots = max(self.slots, len(self._used) + 1)
        length = max(self.length, tokens)
        return slots * length * self.bytes_per_token <= self.budget_bytes

    def allocate(self, tokens: int) -> int:
        """A slot for a sequence of at most `tokens`; call only when `fits(tokens)`."""
        slots, length = self._shape_for(tokens)
        if slots * length * self.bytes_per_token > self.budget_bytes:
            slots, length = max(self.slots, len(self._used) + 1), max(self.length, tokens)
        if slots > self.slots or length > self.length:
            self._grow(slots, length)
        slot = self._free.pop(0)
        self._used[slot] = tokens
        return slot

    def release(self, slot: int) -> None:
        """Give a finished sequence's slot back; the last one out drops the tensors."""
        self._used.pop(slot, None)
        self._free.append(slot)
        self._free.sort()
        if not self._used:
            self.k, self.v, self.slots, self.length, self._free = [], [], 0, 0, []

    def _grow(self, slots: int, length: int) -> None:
        """Every tensor grown to (slots, kv_heads, length, head_dim), one at a time.

        Each old tensor is freed as soon as it is copied, before the next one is allocated, so
        memory peaks at the new size plus one old tensor. Allocating all the new tensors before
        freeing the old ones peaked at old plus new: about twice the budget.
        """
        shape = (slots, self.kv_heads, length, self.head_dim)
        if not self.slots:
            self.k = [self._zeros(shape) for _ in range(self.layers)]
            self.v = [self._zeros(shape) for _ in range(self.layers)]
        else:
            for tensors in (self.k, self.v):
                for i in range(self.layers):
                    grown = self._zeros(shape)
                    grown[: self.slots, :, : self.length] = tensors[i]
                    tensors[i] = grown  # drops the old tensor's last reference: freed here
        self._free += range(self.slots, slots)
        self._free.sort()
        self.slots, self.length = slots, length

    def _zeros(self, shape: tuple[int, int, int, int]) -> Tensor:
        return torch.zeros(shape, dtype=self.dtype, device=self.device)
