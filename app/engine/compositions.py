"""Rows whose adapter is a composition: `Σ_i scale_i · s_i · B_i A_i` over adapter versions.

A composition travels through the engine as one key, like a version id: `v1*0.5+v2*-1.0`, its
versions sorted, a version named twice counted once with its scales added, zero scales dropped
(all zero: the base) and one version at scale 1 written as the version itself. Its weights are
the sources' concatenated (`cat`, exact: A' stacks each scale_i · s_i · A_i, B' sits the B_i
side by side, scaling 1), so a row's cost grows with the total rank of its composition, and
stacking, mixed batches and merged copies treat it as any adapter. Versions never change, so a
composed adapter kept by its key is never stale.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence

from app.adapters import AdapterRecord
from app.lora import LoraAdapter
from app.lora.compose import compose

_PLUS, _TIMES = "+", "*"  # never in a version id (64 hex digits)
Load = Callable[[str, str], tuple[AdapterRecord, LoraAdapter]]


def composition_key(parts: Iterable[tuple[str, float]]) -> str | None:
    """The key of a composition of (version, scale); None when it leaves the base alone."""
    summed: dict[str, float] = {}
    for version, scale in parts:
        summed[version] = summed.get(version, 0.0) + scale
    kept = sorted((v, s) for v, s in summed.items() if s != 0.0)
    if not kept:
        return None
    if len(kept) == 1 and kept[0][1] == 1.0:
        return kept[0][0]
    return _PLUS.join(f"{v}{_TIMES}{s!r}" for v, s in kept)


Parts = tuple[tuple[str, float], ...]


@functools.lru_cache(maxsize=16384)  # a batch asks for each of its rows' keys more than once
def parts_of(key: str) -> Parts | None:
    """The (version, scale) parts of a composition key; None for a plain version."""
    if _TIMES not in key:
        return None
    return tuple((v, float(s)) for v, _, s in (p.partition(_TIMES) for p in key.split(_PLUS)))


def contains(key: str, version: str) -> bool:
    parts = parts_of(key)
    return parts is not None and any(v == version for v, _ in parts)


class Compositions:
    """Loads versions and compositions alike; composed adapters kept within `max_bytes` (as
    loaded adapters are within ADAPTER_CACHE_BYTES), least recently used out."""

    def __init__(self, load: Load, order: Sequence[str], max_bytes: int) -> None:
        self._load, self._order, self.max_bytes = load, list(order), max_bytes
        self._lock = threading.Lock()
        self._held: OrderedDict[str, tuple[AdapterRecord, LoraAdapter]] = OrderedDict()
        self.nbytes = 0

    def resolve(
        self, keys: Iterable[str], param: str
    ) -> dict[str, tuple[AdapterRecord, LoraAdapter | None]]:
        """Each version's record and weights; each composition's first source's record and
        its concatenated adapter if it is held, else None (rows on vectors take each source's
        terms and never need it: making one per new composition costs more than the forward),
        its sources loaded either way, each version once (an unknown version fails here)."""
        out: dict[str, tuple[AdapterRecord, LoraAdapter | None]] = {}
        loaded: dict[str, tuple[AdapterRecord, LoraAdapter]] = {}
        for key in keys:
            parts = parts_of(key)
            if parts is None:
                out[key] = loaded[key] = loaded.get(key) or self._load(key, param)
                continue
            with self._lock:
                held = self._held.get(key)
            if held is not None:
                out[key] = held
                continue
            for version, _ in parts:
                if version not in loaded:
                    loaded[version] = self._load(version, param)
            out[key] = (loaded[parts[0][0]][0], None)
        return out

    def load(self, key: str, param: str) -> tuple[AdapterRecord, LoraAdapter]:
        """A version's, or a composition's concatenated adapter (made once, kept)."""
        parts = parts_of(key)
        if parts is None:
            return self._load(key, param)
        with self._lock:
            held = self._held.get(key)
            if held is not None:
                self._held.move_to_end(key)
                return held
        loaded = [(self._load(v, param), scale) for v, scale in parts]
        # Composed in the dtype the terms are computed in (fp32 on a CPU with a 16-bit base).
        adapter = compose([(a.terms, s) for (_, a), s in loaded], "cat", self._order)
        held = (loaded[0][0][0], adapter)
        with self._lock:
            if key not in self._held and adapter.nbytes <= self.max_bytes:
                self._held[key] = held
                self.nbytes += adapter.nbytes
                while self.nbytes > self.max_bytes:
                    _, (_, evicted) = self._held.popitem(last=False)
                    self.nbytes -= evicted.nbytes
        return held

    def forget(self, version: str) -> list[str]:
        """Drop the compositions of a version no name uses any more; their keys."""
        with self._lock:
            gone = [k for k in self._held if contains(k, version)]
            for key in gone:
                self.nbytes -= self._held.pop(key)[1].nbytes
        return gone
