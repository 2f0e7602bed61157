"""One forward for a batch whose rows use different adapters (Punica's SGMV, in plain torch).

The rows are sorted so that each adapter's rows are one contiguous segment; every layer
computes the base once for all rows, then adds each segment's own LoRA term in place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import torch
from torch import Tensor

from app.lora.layers import DeltaPlan
from app.lora.ops import LoraAdapter, add_term


class _Indexable(Protocol):
    def __getitem__(self, index: Any, /) -> Any: ...


R = TypeVar("R", bound=_Indexable)  # rows: a tensor, or any batch that takes an index tensor


@dataclass(frozen=True)
class Segment:
    """Rows start:stop of the sorted batch all use `adapter` (None: the base alone)."""

    key: str | None
    adapter: LoraAdapter | None
    start: int
    stop: int


@dataclass(frozen=True)
class MixedBatch:
    """Which rows use which adapter: a sort order and the segments it produces."""

    order: Tensor | None  # (N,) sorted position -> original row; None when already grouped
    inverse: Tensor | None  # (N,) original row -> sorted position
    segments: tuple[Segment, ...]

    @classmethod
    def build(
        cls,
        row_keys: Sequence[str | None],
        adapters: Mapping[str, LoraAdapter],
        device: torch.device | None = None,
    ) -> MixedBatch:
        """Group rows by key (an adapter name or None), in order of first appearance."""
        groups: dict[str | None, list[int]] = {}
        for row, key in enumerate(row_keys):
            groups.setdefault(key, []).append(row)
        order_list = [row for rows in groups.values() for row in rows]
        segments, start = [], 0
        for key, rows in groups.items():
            adapter = None if key is None else adapters[key]
            segments.append(Segment(key, adapter, start, start + len(rows)))
            start += len(rows)
        if order_list == list(range(len(order_list))):
            return cls(None, None, tuple(segments))
        order = torch.tensor(order_list, dtype=torch.long, device=device)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order_list), device=device)
        return cls(order, inverse, tuple(segments))

    def sort(self, x: R) -> R:
        """Rows in segment order."""
        return x if self.order is None else x[self.order]

    def unsort(self, y: Tensor) -> Tensor:
        """Rows back in the caller's order."""
        return y if self.inverse is None else y[self.inverse]

    def linear(self) -> DeltaPlan:
        """Base once for the whole (sorted) batch, then each segment's LoRA term."""

        def add(name: str, x: Tensor, y: Tensor) -> None:
            for seg in self.segments:
                module = seg.adapter.terms.modules.get(name) if seg.adapter is not None else None
                if module is not None:
                    add_term(y[seg.start : seg.stop], x[seg.start : seg.stop], module)

        return DeltaPlan(add)
