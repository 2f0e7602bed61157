"""One forward for a batch whose rows use compositions: each row a weighted list of adapters.

Each (row, adapter, scale) entry becomes a row of its own for the LoRA terms: the entries' rows
are gathered, their terms computed by any plan for single adapters (stacked or sorted by
adapter), scaled per entry and added back into their rows. The terms' cost grows with the
entries, the sum of each row's composition, and not with the number of distinct compositions.
A stacked batch takes the entries as they are (StackedBatch.of_entries: each entry's row
gathered straight into its adapter's slot, its scale applied at rank width); `linear` serves
any other plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from app.lora.layers import DeltaPlan


@dataclass(frozen=True)
class Entries:
    """A batch's (row, adapter key, scale) entries, in row order."""

    rows: list[int]  # (E,) each entry's row
    keys: tuple[str, ...]  # (E,) each entry's adapter
    scales: list[float]  # (E,) each entry's scale
    n_rows: int  # the batch's rows (rows with no entry: the base alone)
    # m when every row has m entries (rows = 0,0,1,1,...): its terms are then summed by a
    # reshape instead of scattered back (the common case: one composition for a whole request)
    each: int = 0

    @classmethod
    def of(cls, row_parts: Sequence[Sequence[tuple[str, float]]]) -> Entries:
        """`row_parts[i]`: row i's (adapter key, scale) entries (none: the base alone)."""
        sizes = {len(parts) for parts in row_parts}
        return cls(
            [i for i, parts in enumerate(row_parts) for _ in parts],
            tuple(key for parts in row_parts for key, _ in parts),
            [s for parts in row_parts for _, s in parts],
            len(row_parts),
            sizes.pop() if len(sizes) == 1 else 0,
        )

    def linear(self, terms: DeltaPlan, device: torch.device) -> DeltaPlan:
        """The plan that adds each entry's term, `terms` computing them for the entries' rows
        (a plan built over `keys`), scaled, into its row."""
        rows = torch.tensor(self.rows, dtype=torch.long, device=device)
        scales = torch.tensor(self.scales, device=device)[:, None]

        def add(name: str, x: torch.Tensor, y: torch.Tensor) -> None:
            if not self.rows:
                return
            out = y.new_zeros(len(self.rows), y.shape[1])
            if self.each:
                terms.add(name, x.repeat_interleave(self.each, dim=0), out)
                out.mul_(scales.to(out.dtype))
                y.add_(out.view(y.shape[0], self.each, y.shape[1]).sum(dim=1))
                return
            terms.add(name, x[rows], out)
            y.index_add_(0, rows, out * scales.to(out.dtype))

        return DeltaPlan(add)
