"""Merged copies of hot adapters' weights, LRU within a byte budget."""

from __future__ import annotations

import threading
from collections import OrderedDict

from torch import Tensor, nn

from app.lora import LoraAdapter, merge_adapter

MergedWeights = dict[str, Tensor]


class MergedCache:
    """name -> merged weights W + s B A of that adapter's targeted layers, keyed by version."""

    def __init__(self, base: nn.Module, max_bytes: int) -> None:
        self.base = base
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[int, MergedWeights, int]] = OrderedDict()
        self._bytes = 0

    def get(self, name: str, version: int) -> MergedWeights | None:
        with self._lock:
            entry = self._entries.get(name)
            if entry is None or entry[0] != version:
                return None
            self._entries.move_to_end(name)
            return entry[1]

    def __contains__(self, key: tuple[str, int]) -> bool:
        with self._lock:
            entry = self._entries.get(key[0])
            return entry is not None and entry[0] == key[1]

    def get_or_merge(self, name: str, version: int, adapter: LoraAdapter) -> MergedWeights:
        """The merged copy, built now if absent; kept only if it fits the budget."""
        weights = self.get(name, version)
        if weights is not None:
            return weights
        weights = merge_adapter(self.base, adapter)
        size = sum(t.numel() * t.element_size() for t in weights.values())
        with self._lock:
            if size <= self.max_bytes:
                self._drop(name)
                self._entries[name] = (version, weights, size)
                self._bytes += size
                while self._bytes > self.max_bytes:
                    _, (_, _, evicted) = self._entries.popitem(last=False)
                    self._bytes -= evicted
        return weights

    def forget(self, name: str) -> None:
        """Drop a copy whose adapter changed or went away."""
        with self._lock:
            self._drop(name)

    def _drop(self, name: str) -> None:
        entry = self._entries.pop(name, None)
        if entry is not None:
            self._bytes -= entry[2]
