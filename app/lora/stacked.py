"""The fast mixed-adapter path: Punica's segmented gather matmul (SGMV), in batched torch ops.

The plain path (mixed.py) loops over adapters in Python. Here adapters are stacked per layer into
padded tensors once (`AdapterStack`: A^T (P, in, r) and s·B^T (P, r, out), ranks grouped into
power-of-two buckets so that padding at most doubles a rank), and a batch only computes where
its rows go (`StackedBatch`): each slot's rows gathered into a padded block (P, L, in), two
batched products for every row's LoRA term, one index_add to put them back. A segment far taller
than the rest (a hot adapter) is done with plain products instead, so it does not make every
block as tall as itself. The stack is reused while the batches' adapters stay within it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

from app.lora.gather import take_rows
from app.lora.layers import DeltaPlan
from app.lora.ops import LoraAdapter, LoraModule, lora_delta

K = TypeVar("K", bound=Hashable)


def rank_bucket(rank: int) -> int:
    """The power of two a rank is padded to."""
    return 1 << (rank - 1).bit_length()


@dataclass(frozen=True)
class _Bucket:
    """One layer's adapters of one rank bucket, stacked."""

    slots: tuple[Hashable, ...]  # the adapter key in each slot
    a_t: Tensor  # (P, in, r)
    b_t: Tensor  # (P, r, out), scaling folded in


@dataclass(frozen=True)
class AdapterStack:
    """Adapters stacked for batched products, per layer and rank bucket."""

    keys: frozenset[Hashable]
    layers: Mapping[str, tuple[_Bucket, ...]]
    modules: Mapping[Hashable, LoraAdapter]

    @classmethod
    def build(cls, adapters: Mapping[K, LoraAdapter]) -> AdapterStack:
        grouped: dict[tuple[str, int], list[tuple[K, LoraModule]]] = {}
        for key, adapter in adapters.items():
            for name, module in adapter.modules.items():
                grouped.setdefault((name, rank_bucket(module.rank)), []).append((key, module))
        layers: dict[str, list[_Bucket]] = {}
        for (name, rank), members in grouped.items():
            first = members[0][1].lora_A
            n_in, n_out = first.shape[1], members[0][1].lora_B.shape[0]
            a_t = first.new_zeros(len(members), n_in, rank)
            b_t = first.new_zeros(len(members), rank, n_out)
            for i, (_, m) in enumerate(members):
                a_t[i, :, : m.rank] = m.lora_A.T
                b_t[i, : m.rank, :] = m.lora_B.T * m.scaling
            bucket = _Bucket(tuple(k for k, _ in members), a_t, b_t)
            layers.setdefault(name, []).append(bucket)
        modules: dict[Hashable, LoraAdapter] = {k: a for k, a in adapters.items()}
        return cls(frozenset(adapters), {n: tuple(b) for n, b in layers.items()}, modules)

    @property
    def nbytes(self) -> int:
        return sum(
            t.numel() * t.element_size()
            for buckets in self.layers.values()
            for b in buckets
            for t in (b.a_t, b.b_t)
        )


@dataclass(frozen=True)
class _Blocks:
    """One bucket's work in a batch: every slot a block of `height` rows."""

    bucket: _Bucket
    gather: Tensor  # (P * L,) the batch row behind each padded slot (padding repeats row 0)
    slots: Tensor  # (M,) padded slot of each real row
    rows: Tensor  # (M,) those rows' positions in the batch
    height: int


@dataclass(frozen=True)
class _Single:
    """A tall segment, done with plain products."""

    module: LoraModule
    rows: Tensor | None  # (n,); None: every row of the batch, in order


@dataclass(frozen=True)
class _Indices:
    """Where a batch's rows go in one bucket's slots: tall segments alone, the rest in blocks."""

    tall: tuple[tuple[int, Tensor | None], ...]  # (slot, its rows; None: every row in order)
    gather: Tensor | None  # as _Blocks, or None when no block is needed
    slots: Tensor | None
    rows: Tensor | None
    height: int

    @classmethod
    def build(
        cls,
        slots: tuple[Hashable, ...],
        groups: Mapping[Hashable, list[int]],
        cap: int,
        n_rows: int,
        as_index: Callable[[list[int]], Tensor],
    ) -> _Indices:
        present = [(s, groups[k]) for s, k in enumerate(slots) if k in groups]
        # Few of the bucket's adapters in use (or one alone): plain products per adapter read
        # only those adapters' weights, where blocks would read every slot's.
        alone = len(present) == 1 or 4 * len(present) < len(slots)
        tall = tuple(
            (s, None if len(rows) == n_rows else as_index(rows))  # all rows: 0..N-1 in order
            for s, rows in present
            if alone or len(rows) > cap
        )
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
        return cls(tall, as_index(gather), as_index(taken), as_index(rows_out), height)


@dataclass(frozen=True)
class StackedBatch:
    """Per layer: the padded blocks and the tall segments of one batch."""

    layers: Mapping[str, tuple[tuple[_Blocks, ...], tuple[_Single, ...]]]

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
            return cls({})
        # Segments over twice the mean size would make every block that tall: they go alone.
        cap = max(4, math.ceil(2 * sum(map(len, groups.values())) / len(groups)))
        as_index = lambda v: torch.tensor(v, dtype=torch.long, device=device)  # noqa: E731
        # Every layer whose bucket holds the same adapters in the same slots gets the same
        # indices: made once per batch, not once per layer (a hundred layers, a few each).
        made: dict[tuple[Hashable, ...], _Indices] = {}
        layers = {}
        for name, buckets in stack.layers.items():
            blocks, singles = [], []
            for bucket in buckets:
                if bucket.slots not in made:
                    made[bucket.slots] = _Indices.build(
                        bucket.slots, groups, cap, len(row_keys), as_index
                    )
                ix = made[bucket.slots]
                for s, rows in ix.tall:
                    singles.append(_Single(stack.modules[bucket.slots[s]].modules[name], rows))
                if ix.gather is not None and ix.slots is not None and ix.rows is not None:
                    blocks.append(_Blocks(bucket, ix.gather, ix.slots, ix.rows, ix.height))
            if blocks or singles:
                layers[name] = (tuple(blocks), tuple(singles))
        return cls(layers)

    def linear(self) -> DeltaPlan:
        """Base once for every row, then all the layer's LoRA terms in a few batched ops."""

        def add(name: str, x: Tensor, y: Tensor) -> None:
            blocks, singles = self.layers.get(name, ((), ()))
            for b in blocks:
                n_slots = b.bucket.a_t.shape[0]
                xp = take_rows(x, b.gather).view(n_slots, b.height, -1)  # (P, L, in)
                d = torch.bmm(torch.bmm(xp, b.bucket.a_t), b.bucket.b_t)  # (P, L, out)
                y.index_add_(0, b.rows, take_rows(d.view(n_slots * b.height, -1), b.slots))
            for single in singles:
                if single.rows is None:
                    y += lora_delta(x, single.module)
                else:
                    delta = lora_delta(take_rows(x, single.rows), single.module)
                    y.index_add_(0, single.rows, delta)

        return DeltaPlan(add)
