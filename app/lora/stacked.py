"""The fast mixed-adapter path: Punica's segmented gather matmul (SGMV), in batched torch ops.

The plain path (mixed.py) loops over adapters in Python. Here adapters are stacked per layer into
padded tensors (`AdapterStack`: A^T (P, in, r) and s·B^T (P, r, out), ranks grouped into
power-of-two buckets so that padding at most doubles a rank), and a batch only computes where
its rows go (`StackedBatch`): each slot's rows gathered into a padded block (P, L, in), batched
products for every row's LoRA term, one index_add to put them back. A segment far taller than
the rest (a hot adapter) is done with plain products instead, so it does not make every block
as tall as itself. The stack is reused while the batches' adapters stay within it.

Layers that read the same rows (q, k and v, fused into one product) are stacked together: their
A^T side by side and their B^T as one block matrix, so one gather, two products and one
index_add serve all of them. Stacks are made on first use, for the layers (or joined layers) a forward asks for.

On the CPU the stack is held in fp32 and the terms computed in it for 16-bit bases: torch's
bf16 batched products at rank widths are 5x slower there than fp32 ones (70 against 14 us for
16 rows of 576 through rank 8), and the few casts cost less than that.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from torch import Tensor

from app.lora.gather import take_rows
from app.lora.layers import DeltaPlan
from app.lora.ops import LoraAdapter, LoraModule, term_dtype

K = TypeVar("K", bound=Hashable)
Slots = tuple[Hashable, ...]


def rank_bucket(rank: int) -> int:
    """The power of two a rank is padded to."""
    return 1 << (rank - 1).bit_length()


@dataclass(frozen=True)
class _Bucket:
    """The adapters of one rank bucket (the same adapters in the same slots) on one or more
    layers that read the same rows: their A^T side by side, their s·B^T as one block matrix
    (each layer's rows of it nonzero only in that layer's columns of the output)."""

    slots: Slots  # the adapter key in each slot
    a_t: Tensor  # (P, in, sum of the layers' r)
    b_t: Tensor  # (P, sum of the layers' r, the output's columns), scaling folded in

    def delta(self, x: Tensor) -> Tensor:
        """Every layer's term for rows `x` ((L, in) through slot s's weights when a_t and b_t
        are one slot's, or (P, L, in) for all slots), side by side as the output lays them."""
        # Two products whatever the number of layers: the zeros of the block matrix cost less
        # than a product per layer and a concatenation (78 against 133 us for q/k/v of 16 rows).
        return (x @ self.a_t) @ self.b_t

    def slot(self, s: int) -> _Bucket:
        return _Bucket(self.slots, self.a_t[s], self.b_t[s])


def _stacked(
    layers: list[tuple[slice, int, list[LoraModule]]], width: int, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """A^T side by side and the block matrix of s·B^T for layers (their output columns, rank
    bucket, one module per slot)."""
    first = layers[0][2][0].lora_A
    n_slots, n_in = len(layers[0][2]), first.shape[1]
    total = sum(rank for _, rank, _ in layers)
    a_t = first.new_zeros(n_slots, n_in, total, dtype=dtype)
    b_t = first.new_zeros(n_slots, total, width, dtype=dtype)
    start = 0
    for cols, rank, modules in layers:
        for i, m in enumerate(modules):
            a_t[i, :, start : start + m.rank] = m.lora_A.T
            b_t[i, start : start + m.rank, cols] = m.lora_B.T * m.scaling
        start += rank
    return a_t, b_t


@dataclass(frozen=True)
class AdapterStack:
    """Adapters stacked for batched products, per layer (or joined layers) and rank bucket."""

    keys: frozenset[Hashable]
    members: Mapping[str, Mapping[int, tuple[tuple[Hashable, LoraModule], ...]]]
    modules: Mapping[Hashable, LoraAdapter]
    _made: dict[tuple[str, ...], tuple[_Bucket, ...]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def build(cls, adapters: Mapping[K, LoraAdapter]) -> AdapterStack:
        grouped: dict[str, dict[int, list[tuple[Hashable, LoraModule]]]] = {}
        for key, adapter in adapters.items():
            for name, module in adapter.modules.items():
                grouped.setdefault(name, {}).setdefault(rank_bucket(module.rank), []).append(
                    (key, module)
                )
        members = {n: {r: tuple(m) for r, m in by.items()} for n, by in grouped.items()}
        modules: dict[Hashable, LoraAdapter] = {k: a for k, a in adapters.items()}
        return cls(frozenset(adapters), members, modules)

    def buckets(self, names: tuple[str, ...], cols: tuple[slice, ...]) -> tuple[_Bucket, ...]:
        """The buckets of layers `names` (whose outputs are `cols` of one product), made once."""
        made = self._made.get(names)
        if made is None:
            with self._lock:
                made = self._made.get(names)
                if made is None:
                    made = self._made[names] = self._make(names, cols)
        return made

    def _make(self, names: tuple[str, ...], cols: tuple[slice, ...]) -> tuple[_Bucket, ...]:
        width = max(c.stop for c in cols)
        by_slots: dict[Slots, list[tuple[slice, int, list[LoraModule]]]] = {}
        for name, layer_cols in zip(names, cols, strict=True):
            for rank, members in self.members.get(name, {}).items():
                slots = tuple(k for k, _ in members)
                by_slots.setdefault(slots, []).append((layer_cols, rank, [m for _, m in members]))
        buckets = []
        for slots, layers in by_slots.items():
            first = layers[0][2][0].lora_A
            a_t, b_t = _stacked(layers, width, term_dtype(first.dtype, first.device))
            buckets.append(_Bucket(slots, a_t, b_t))
        return tuple(buckets)


@dataclass(frozen=True)
class Indices:
    """Where a batch's rows go in one bucket's slots: tall segments alone, the rest in blocks."""

    tall: tuple[tuple[int, Tensor | slice], ...]  # (slot, its rows: a slice where in a run)
    gather: Tensor | None  # (P * L,) the batch row behind each padded slot (padding: row 0)
    slots: Tensor | None  # (M,) padded slot of each real row; None: every padded slot, in order
    rows: Tensor | None  # (M,) those rows' positions in the batch
    height: int  # L, rows per slot

    @classmethod
    def build(
        cls,
        slots: Slots,
        groups: Mapping[Hashable, list[int]],
        cap: int,
        n_rows: int,
        as_index: Callable[[list[int]], Tensor],
    ) -> Indices:
        present = [(s, groups[k]) for s, k in enumerate(slots) if k in groups]
        # Few of the bucket's adapters in use (or one alone): plain products per adapter read
        # only those adapters' weights, where blocks would read every slot's.
        alone = len(present) == 1 or 4 * len(present) < len(slots)
        tall = tuple((s, _run(rows, as_index)) for s, rows in present if alone or len(rows) > cap)
        short = [(s, rows) for s, rows in present if not alone and len(rows) <= cap]
        if not short:
            return cls(tall, None, None, None, 0)
        height = max(len(rows) for _, rows in short)
        gather = [0] * (len(slots) * height)
        taken: list[int] = []
        rows_out: list[int] = []
        for s, rows in short:
            gather[s * height : s * height + len(rows)] = rows
            taken += range(s * height, s * height + len(rows))
            rows_out += rows
        # Every padded slot holds a row (each adapter's rows, none missing): no gather needed.
        padded = None if len(taken) == len(gather) else as_index(taken)
        return cls(tall, as_index(gather), padded, as_index(rows_out), height)


def _run(rows: list[int], as_index: Callable[[list[int]], Tensor]) -> Tensor | slice:
    """Rows in a run (a prefill chunk's, or every row) as a slice: read and added in place
    without an index."""
    if rows[-1] - rows[0] == len(rows) - 1:  # rows ascend: a run when first and last agree
        return slice(rows[0], rows[-1] + 1)
    return as_index(rows)


@dataclass(frozen=True)
class StackedBatch:
    """One batch's rows in an AdapterStack's slots, the same for every layer."""

    stack: AdapterStack
    indices: Mapping[Slots, Indices]
    keys: tuple[Hashable | None, ...] = ()  # the rows' keys it was built for
    _work: dict[tuple[str, ...], list[tuple[_Bucket, Indices]]] = field(
        default_factory=dict, repr=False
    )

    @classmethod
    def build(
        cls,
        row_keys: Sequence[Hashable | None],
        stack: AdapterStack,
        device: torch.device | None = None,
    ) -> StackedBatch:
        """Rows name adapter keys (or None); every key must be in `stack`."""
        device = device or torch.device("cpu")
        groups: dict[Hashable, list[int]] = {}
        for row, key in enumerate(row_keys):
            if key is not None:
                groups.setdefault(key, []).append(row)
        if not groups:
            return cls(stack, {}, tuple(row_keys))
        # Segments over twice the mean size would make every block that tall: they go alone.
        cap = max(4, math.ceil(2 * sum(map(len, groups.values())) / len(groups)))
        as_index = lambda v: torch.tensor(v, dtype=torch.long, device=device)  # noqa: E731
        # Every bucket holding the same adapters in the same slots gets the same indices: made
        # once per batch, not once per layer (a hundred layers, a few slot layouts).
        layouts = {tuple(k for k, _ in m) for by in stack.members.values() for m in by.values()}
        indices = {
            slots: Indices.build(slots, groups, cap, len(row_keys), as_index)
            for slots in layouts
            if any(k in groups for k in slots)
        }
        return cls(stack, indices, tuple(row_keys))

    def serves(self, row_keys: Sequence[Hashable | None], stack: AdapterStack) -> bool:
        """Whether this batch can be used again for these rows on this stack (a decode step
        usually has the rows of the one before: its indices and lookups are made once)."""
        return self.stack is stack and self.keys == tuple(row_keys)

    def plan(self, name: str, width: int) -> list[tuple[_Bucket, Indices]]:
        """Layer `name`'s buckets that this batch uses, with their indices."""
        return self._plan((name,), (slice(0, width),))

    def _plan(
        self, names: tuple[str, ...], cols: tuple[slice, ...]
    ) -> list[tuple[_Bucket, Indices]]:
        if not self.indices:
            return []
        buckets = self.stack.buckets(names, cols)
        return [(b, self.indices[b.slots]) for b in buckets if b.slots in self.indices]

    def linear(self) -> DeltaPlan:
        """Base once for every row, then all the layer's LoRA terms in a few batched ops."""

        def add_joined(
            names: tuple[str, ...], cols: tuple[slice, ...], x: Tensor, y: Tensor
        ) -> None:
            work = self._work.get(names)
            if work is None:
                work = self._work[names] = self._plan(names, cols)
            for bucket, ix in work:
                _add(bucket, ix, x, y)

        def add(name: str, x: Tensor, y: Tensor) -> None:
            add_joined((name,), (slice(0, y.shape[1]),), x, y)

        return DeltaPlan(add, add_joined)


def _add(bucket: _Bucket, ix: Indices, x: Tensor, y: Tensor) -> None:
    dtype = bucket.a_t.dtype
    for s, rows in ix.tall:
        one = bucket.slot(s)
        if isinstance(rows, slice):
            y[rows] += one.delta(x[rows].to(dtype)).to(y.dtype)
        else:
            y.index_add_(0, rows, one.delta(take_rows(x, rows).to(dtype)).to(y.dtype))
    if ix.gather is None or ix.rows is None:
        return
    n_slots = len(bucket.slots)
    xp = take_rows(x, ix.gather).view(n_slots, ix.height, -1).to(dtype)  # (P, L, in)
    d = bucket.delta(xp).view(n_slots * ix.height, -1).to(y.dtype)  # (P * L, width)
    y.index_add_(0, ix.rows, d if ix.slots is None else take_rows(d, ix.slots))
