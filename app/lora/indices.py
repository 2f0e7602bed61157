"""Where a batch's rows go in one bucket of an AdapterStack (stacked.py): each adapter's rows
gathered into its slot of a padded block (P slots of L rows), or alone when its segment is far
taller than the rest (or few of the bucket's adapters are in use); with each row's scale when
the rows are a composition's entries (composed.py).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

Slots = tuple[Hashable, ...]  # the adapter key in each slot of a bucket


@dataclass(frozen=True)
class Indices:
    """Where a batch's rows go in one bucket's slots: tall segments alone, the rest in blocks."""

    # (slot, its rows (None: every row in order), their scales (None: 1))
    tall: tuple[tuple[int, Tensor | None, Tensor | None], ...]
    gather: Tensor | None  # (P * L,) the batch row behind each padded slot (padding: row 0)
    slots: Tensor | None  # (M,) padded slot of each real row; None: every padded slot, in order
    rows: Tensor | None  # (M,) those rows' positions in the batch
    height: int  # L, rows per slot
    scales: Tensor | None = None  # (P, L, 1) each padded slot's scale (padding: 0); None: 1

    @classmethod
    def build(
        cls,
        slots: Slots,
        groups: Mapping[Hashable, list[int]],
        cap: int,
        n_rows: int,
        device: torch.device,
        scaled: Mapping[Hashable, list[float]] | None = None,
    ) -> Indices:
        """`groups`: each key's rows, ascending; `scaled`: their scales (None: all 1)."""

        def as_index(v: list[int]) -> Tensor:
            return torch.tensor(v, dtype=torch.long, device=device)

        def as_scales(v: list[float]) -> Tensor:
            return torch.tensor(v, dtype=torch.float32, device=device)

        present = [(s, groups[k]) for s, k in enumerate(slots) if k in groups]
        # Few of the bucket's adapters in use (or one alone): plain products per adapter read
        # only those adapters' weights, where blocks would read every slot's.
        alone = len(present) == 1 or 4 * len(present) < len(slots)
        tall = tuple(
            (
                s,
                None if len(rows) == n_rows else as_index(rows),  # all rows: 0..N-1 in order
                None if scaled is None else as_scales(scaled[slots[s]])[:, None],
            )
            for s, rows in present
            if alone or len(rows) > cap
        )
        short = [(s, rows) for s, rows in present if not alone and len(rows) <= cap]
        if not short:
            return cls(tall, None, None, None, 0)
        height = max(len(rows) for _, rows in short)
        gather = [0] * (len(slots) * height)
        weights = [0.0] * len(gather)
        taken: list[int] = []
        rows_out: list[int] = []
        for s, rows in short:
            gather[s * height : s * height + len(rows)] = rows
            if scaled is not None:
                weights[s * height : s * height + len(rows)] = scaled[slots[s]]
            taken += range(s * height, s * height + len(rows))
            rows_out += rows
        # Every padded slot holds a row (each adapter's rows, none missing): no gather needed.
        padded = None if len(taken) == len(gather) else as_index(taken)
        scale = None if scaled is None else as_scales(weights).view(len(slots), height, 1)
        return cls(tall, as_index(gather), padded, as_index(rows_out), height, scale)
