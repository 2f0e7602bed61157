"""Loaded adapter weights kept in memory by version id, least recently used out first.

Versions never change, so what is kept is never stale; it is bounded by bytes and, on a Ray
replica, by the number of versions its multiplexer holds.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict

from app.lora import LoraAdapter


class WeightCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        # At most this many versions (None: only max_bytes bounds them).
        self.max_versions: int | None = None
        self.nbytes = 0
        self._lock = threading.Lock()  # guards the dict; never held during I/O
        self._held: OrderedDict[str, LoraAdapter] = OrderedDict()
        self._load_locks: weakref.WeakValueDictionary[str, threading.Lock] = (
            weakref.WeakValueDictionary()
        )

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, version: str) -> bool:
        with self._lock:
            return version in self._held

    def get(self, version: str) -> LoraAdapter | None:
        with self._lock:
            adapter = self._held.get(version)
            if adapter is not None:
                self._held.move_to_end(version)
            return adapter

    def put(self, version: str, adapter: LoraAdapter) -> None:
        """Keep `adapter`, dropping the least recently used past the bounds."""
        with self._lock:
            if adapter.nbytes > self.max_bytes or version in self._held:
                return
            self._held[version] = adapter
            self.nbytes += adapter.nbytes
            most = self.max_versions if self.max_versions is not None else len(self._held)
            while self.nbytes > self.max_bytes or len(self._held) > most:
                _, evicted = self._held.popitem(last=False)
                self.nbytes -= evicted.nbytes

    def drop(self, version: str) -> None:
        with self._lock:
            adapter = self._held.pop(version, None)
            if adapter is not None:
                self.nbytes -= adapter.nbytes

    def versions(self) -> list[str]:
        """Versions held, least recently used first."""
        with self._lock:
            return list(self._held)

    def load_lock(self, version: str) -> threading.Lock:
        """One lock per version being loaded: two requests for it read the store once."""
        with self._lock:
            lock = self._load_locks.get(version)
            if lock is None:
                lock = threading.Lock()
                self._load_locks[version] = lock
            return lock
