"""The fast mixed-adapter path: Punica's segmented gather matmul (SGMV), in batched torch ops.

The plain path (mixed.py) loops over adapters in Python. Here adapters are stacked per layer into
padded tensors (`AdapterStack`: A^T (P, in, r) and s·B^T (P, r, out), ranks grouped into
power-of-two buckets so that padding at most doubles a rank), and a batch only computes where
its rows go (`StackedBatch`): each slot's rows gathered into a padded block (P, L, in), batched
products for every row's LoRA term, one index_add to put them back. A segment far taller than
the rest (a hot adapter) is done with plain products instead, so it does not make every block
as tall as itself. The stack is reused while the batches' adapters stay within it.

Layers that read the same rows (q, k and v, fused into one product) are stacked together: their
A^T side by side, so one gather, one product through every A and one index_add serve all of
them. Stacks are made on first use, for the layers (or joined layers) a forward asks for.

On the CPU the stack is held in fp32 and the terms computed in it for 16-bit bases: torch's
bf16 batched products at rank widths are 5x slower there than fp32 ones (70 against 14 us for
16 rows of 576 through rank 8), and the few casts cost less than that.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import TypeVar

import torch
from torch import Tensor

from app.lora.composed import Entries
from app.lora.gather import take_rows
from app.lora.indices import Indices, Slots
from app.lora.layers import DeltaPlan
from app.lora.ops import LoraAdapter, LoraModule, term_dtype

K = TypeVar("K", bound=Hashable)


def rank_bucket(rank: int) -> int:
    """The power of two a rank is padded to."""
    return 1 << (rank - 1).bit_length()


@dataclass(frozen=True)
class _Bucket:
    """The adapters of one rank bucket (the same adapters in the same slots) on one or more
    layers that read the same rows: their A^T side by side, each layer's s·B^T apart."""

    slots: Slots  # the adapter key in each slot
    a_t: Tensor  # (P, in, sum of the layers' r)
    b_ts: tuple[Tensor, ...]  # per layer (P, r, out), scaling folded in
    ranks: tuple[int, ...]  # each layer's columns of a_t
    cols: tuple[slice, ...]  # each layer's columns of the output
    width: int  # the output's columns
    whole: bool = field(init=False)  # the layers' columns are the output's, in order

    def __post_init__(self) -> None:
        object.__setattr__(self, "whole", _contiguous(self.cols, self.width))

    def delta(self, x: Tensor, scale: Tensor | None = None) -> Tensor:
        """Every layer's term for rows `x` ((L, in) through slot s's weights when a_t and b_ts
        are one slot's, or (P, L, in) for all slots), side by side as the output lays them;
        each row's term times its `scale` ((L, 1) or (P, L, 1)) when given."""
        t = x @ self.a_t
        if scale is not None:
            t.mul_(scale.to(t.dtype))  # at rank width: r columns, not the output's
        if len(self.b_ts) == 1 and self.whole:
            return t @ self.b_ts[0]
        parts, start = [], 0
        for rank, b_t in zip(self.ranks, self.b_ts, strict=True):
            parts.append(t[..., start : start + rank] @ b_t)
            start += rank
        if self.whole:
            return torch.cat(parts, dim=-1)
        out = t.new_zeros(*t.shape[:-1], self.width)  # a layer this bucket's adapters skip
        for cols, part in zip(self.cols, parts, strict=True):
            out[..., cols] = part
        return out

    def slot(self, s: int) -> _Bucket:
        return _Bucket(
            self.slots, self.a_t[s], tuple(b[s] for b in self.b_ts), self.ranks, self.cols,
            self.width,
        )  # fmt: skip


def _contiguous(cols: tuple[slice, ...], width: int) -> bool:
    return (
        cols[0].start == 0
        and cols[-1].stop == width
        and all(a.stop == b.start for a, b in pairwise(cols))
    )


def _stacked(modules: list[LoraModule], rank: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    first = modules[0]
    n_in, n_out = first.lora_A.shape[1], first.lora_B.shape[0]
    a_t = first.lora_A.new_zeros(len(modules), n_in, rank, dtype=dtype)
    b_t = first.lora_A.new_zeros(len(modules), rank, n_out, dtype=dtype)
    for i, m in enumerate(modules):
        a_t[i, :, : m.rank] = m.lora_A.T
        b_t[i, : m.rank, :] = m.lora_B.T * m.scaling
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
            dtype = term_dtype(first.dtype, first.device)
            stacked = [_stacked(modules, rank, dtype) for _, rank, modules in layers]
            a_t = torch.cat([a for a, _ in stacked], dim=2) if len(stacked) > 1 else stacked[0][0]
            ranks = tuple(rank for _, rank, _ in layers)
            out_cols = tuple(c for c, _, _ in layers)
            b_ts = tuple(b for _, b in stacked)
            buckets.append(_Bucket(slots, a_t, b_ts, ranks, out_cols, width))
        return tuple(buckets)


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
        return cls._build(row_keys, range(len(row_keys)), None, len(row_keys), stack, device)

    @classmethod
    def of_entries(
        cls, entries: Entries, stack: AdapterStack, device: torch.device | None = None
    ) -> StackedBatch:
        """Rows on compositions: each entry adds its key's term for its row, times its scale."""
        e = entries
        return cls._build(e.keys, e.rows, e.scales, e.n_rows, stack, device)

    @classmethod
    def _build(
        cls,
        keys: Sequence[Hashable | None],
        rows: Sequence[int],
        scales: Sequence[float] | None,
        n_rows: int,
        stack: AdapterStack,
        device: torch.device | None,
    ) -> StackedBatch:
        device = device or torch.device("cpu")
        groups: dict[Hashable, list[int]] = {}
        scaled: dict[Hashable, list[float]] | None = None if scales is None else {}
        for i, (row, key) in enumerate(zip(rows, keys, strict=True)):
            if key is not None:
                groups.setdefault(key, []).append(row)
                if scaled is not None and scales is not None:
                    scaled.setdefault(key, []).append(scales[i])
        if not groups:
            return cls(stack, {}, tuple(keys))
        # Segments over twice the mean size would make every block that tall: they go alone.
        cap = max(4, math.ceil(2 * sum(map(len, groups.values())) / len(groups)))
        # Every bucket holding the same adapters in the same slots gets the same indices: made
        # once per batch, not once per layer (a hundred layers, a few slot layouts).
        layouts = {tuple(k for k, _ in m) for by in stack.members.values() for m in by.values()}
        indices = {
            slots: Indices.build(slots, groups, cap, n_rows, device, scaled)
            for slots in layouts
            if any(k in groups for k in slots)
        }
        return cls(stack, indices, tuple(keys))

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
    for s, rows, scales in ix.tall:
        one = bucket.slot(s)
        if rows is None:
            y += one.delta(x.to(dtype), scales).to(y.dtype)
        else:
            y.index_add_(0, rows, one.delta(take_rows(x, rows).to(dtype), scales).to(y.dtype))
    if ix.gather is None or ix.rows is None:
        return
    n_slots = len(bucket.slots)
    xp = take_rows(x, ix.gather).view(n_slots, ix.height, -1).to(dtype)  # (P, L, in)
    d = bucket.delta(xp, ix.scales).view(n_slots * ix.height, -1).to(y.dtype)  # (P * L, width)
    y.index_add_(0, ix.rows, d if ix.slots is None else take_rows(d, ix.slots))
