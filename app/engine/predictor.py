"""Run a batch of rows, each naming its own adapter (or none), merged or unmerged."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from app.adapters.registry import AdapterRecord, AdapterRegistry
from app.engine.merged import MergedCache
from app.lora import LoraAdapter, MixedBatch, merged_linear
from app.model import BaseModel

Mode = Literal["auto", "unmerged", "merged"]
UsedMode = Literal["unmerged", "merged"]


class Predictor:
    """Computes predictions on the frozen base with per-row adapters; safe to call from threads."""

    def __init__(self, base: BaseModel, registry: AdapterRegistry, merged_cache_bytes: int) -> None:
        self.base = base
        self.registry = registry
        self.merged = MergedCache(base.module, merged_cache_bytes)
        registry.on_change(self.merged.forget)

    def is_merged(self, name: str, version: int) -> bool:
        return (name, version) in self.merged

    def predict(
        self, x: Tensor, row_adapters: Sequence[str | None], mode: Mode, param: str = "adapters"
    ) -> tuple[Tensor, UsedMode]:
        """(N, in) -> (N, out); `row_adapters[i]` names row i's adapter."""
        names = list(dict.fromkeys(n for n in row_adapters if n is not None))
        loaded = {n: self.registry.load(n, param) for n in names}
        records = {n: record for n, (record, _) in loaded.items()}
        adapters: dict[str, LoraAdapter] = {n: adapter for n, (_, adapter) in loaded.items()}
        used = self._choose(mode, names, records)
        x = x.to(device=self.base.device, dtype=self.base.dtype)
        batch = MixedBatch.build(row_adapters, adapters, device=self.base.device)
        with torch.inference_mode():
            xs = batch.sort(x)  # (N, in), rows grouped by adapter
            if used == "unmerged":
                ys = self.base.module(xs, linear=batch.linear())
            else:
                parts = []
                for seg in batch.segments:
                    rows = xs[seg.start : seg.stop]
                    if seg.key is None or seg.adapter is None:
                        parts.append(self.base.module(rows))
                        continue
                    version = records[seg.key].version
                    weights = self.merged.get_or_merge(seg.key, version, seg.adapter)
                    parts.append(self.base.module(rows, linear=merged_linear(weights)))
                ys = torch.cat(parts)
            return batch.unsort(ys).float(), used

    def _choose(self, mode: Mode, names: list[str], records: dict[str, AdapterRecord]) -> UsedMode:
        """`auto` serves a single-adapter batch merged when a merged copy already exists."""
        if mode != "auto":
            return mode
        if len(names) == 1 and self.is_merged(names[0], records[names[0]].version):
            return "merged"
        return "unmerged"
