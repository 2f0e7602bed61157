"""Merged copies of hot adapters' weights, LRU within a byte budget."""

from __future__ import annotations

import threading
from collections import OrderedDict

from torch import Tensor, nn

from app.lora import LoraAdapter, merge_adapter

MergedWeights = dict[str, Tensor]


class MergedCache:
    """Version id -> merged weights W + s B A of that version's targeted layers.

    Versions never change, so a copy is never stale: one no name uses any more is dropped by
    `forget`, or ages out.
    """

    def __init__(self, base: nn.Module, max_bytes: int) -> None:
        self.base = base
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[MergedWeights, int]] = OrderedDict()
        self._bytes = 0

    def get(self, version: str) -> MergedWeights | None:
        with self._lock:
            entry = self._entries.get(version)
            if entry is None:
                return None
            self._entries.move_to_end(version)
            return entry[0]

    def __contains__(self, version: str) -> bool:
        with self._lock:
            return version in self._entries

    def get_or_merge(self, version: str, adapter: LoraAdapter) -> MergedWeights:
        """The merged copy, built now if absent; kept only if it fits the budget."""
        weights = self.get(version)
        if weights is not None:
            return weights
        weights = merge_adapter(self.base, adapter)
        size = sum(t.numel() * t.element_size() for t in weights.values())
        with self._lock:
            if size <= self.max_bytes and version not in self._entries:
                self._entries[version] = (weights, size)
                self._bytes += size
                while self._bytes > self.max_bytes:
                    _, (_, evicted) = self._entries.popitem(last=False)
                    self._bytes -= evicted
        return weights

    def held(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def forget(self, version: str) -> None:
        """Drop the copy of a version no name uses any more."""
        with self._lock:
            entry = self._entries.pop(version, None)
            if entry is not None:
                self._bytes -= entry[1]
