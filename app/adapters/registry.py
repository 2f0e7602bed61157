"""The adapters this service knows: an index over the store, a lock per name, a weight cache."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_safetensors
from safetensors.torch import load_file, save

from app.adapters import peft_format as fmt
from app.adapters.store import AdapterStore
from app.errors import (
    AdapterExists,
    AdapterNotFound,
    InvalidAdapter,
    InvalidName,
    TooManyAdapters,
)
from app.lora import LoraAdapter, LoraConfig

log = logging.getLogger(__name__)

Source = Literal["upload", "training"]
_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


@dataclass
class AdapterRecord:
    """What is known about an adapter without reading its weights."""

    name: str
    config: LoraConfig
    size_bytes: int
    created_at: int
    source: Source
    metadata: dict[str, str]
    version: int  # changes on every write, so caches keyed by it never serve stale weights
    sha256: str | None = field(default=None, repr=False)  # of the weights file; computed lazily


@dataclass(frozen=True)
class BaseInfo:
    """What the registry needs of the base model: its linear layers, name, device, dtype."""

    linears: Mapping[str, tuple[int, int]]  # module -> (in_features, out_features)
    name: str
    fingerprint: str
    device: torch.device
    dtype: torch.dtype


class AdapterRegistry:
    """Validates, writes, indexes, deletes and lazily loads adapters; safe across threads."""

    def __init__(
        self,
        store: AdapterStore,
        base: BaseInfo,
        max_rank: int,
        cache_bytes: int,
        max_adapters: int = 100_000,
    ) -> None:
        self.max_adapters = max_adapters
        self.store = store
        self.base = base
        self.max_rank = max_rank
        self.cache_bytes = cache_bytes
        self._lock = threading.Lock()  # guards the dicts below; never held during I/O
        self._records: dict[str, AdapterRecord] = {}
        self._cache: OrderedDict[str, tuple[int, LoraAdapter]] = OrderedDict()
        self._cached_bytes = 0
        self._name_locks: weakref.WeakValueDictionary[str, threading.Lock] = (
            weakref.WeakValueDictionary()
        )
        self._versions = 0
        self.cache_hits = 0  # load() answered from memory
        self.cache_misses = 0  # load() read the weights from disk
        self._listeners: list[Callable[[str], None]] = []

    # --- start-up -------------------------------------------------------------------------
    def scan(self) -> dict[str, str]:
        """Index every adapter folder; a broken one is logged and skipped. Returns the skipped."""
        self.store.recover()
        skipped: dict[str, str] = {}
        for name in self.store.names():
            try:
                record = self._read_record(name)
            except (InvalidAdapter, InvalidName, OSError, SafetensorError, ValueError) as exc:
                reason = getattr(exc, "message", None) or str(exc)
                log.warning("skipping adapter folder %r: %s", name, reason)
                skipped[name] = reason
                continue
            with self._lock:
                self._records[name] = record
        log.info("registered %d adapters, skipped %d", len(self._records), len(skipped))
        return skipped

    def _read_record(self, name: str) -> AdapterRecord:
        fmt.check_name(name)
        folder = self.store.path(name)
        weights = folder / fmt.WEIGHTS_FILE
        if not weights.is_file():
            if (folder / "adapter_model.bin").exists():
                raise InvalidAdapter("adapter_model.bin is a pickle; only safetensors is read")
            raise InvalidAdapter(f"{fmt.WEIGHTS_FILE} is missing")
        config = fmt.parse_config(
            (folder / fmt.CONFIG_FILE).read_bytes(), self.base.linears, self.max_rank
        )
        # Only the header is read here: the weights stay on disk until first used.
        with safe_open(weights, framework="pt") as f:
            slices = {k: f.get_slice(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
            header = {k: (tuple(s.get_shape()), s.get_dtype()) for k, s in slices.items()}
            metadata = dict(f.metadata() or {})
        fmt.check_header(header, config, self.base.linears)
        stat = weights.stat()
        created = metadata.get("created_at", "")
        source = metadata.get("source")
        return AdapterRecord(
            name=name,
            config=config,
            size_bytes=stat.st_size,
            created_at=int(created) if created.isdigit() else int(stat.st_mtime),
            source=source if source in ("upload", "training") else "upload",  # type: ignore[arg-type]
            metadata=metadata,
            version=self._next_version(),
        )

    # --- reads ----------------------------------------------------------------------------
    def list(self) -> list[AdapterRecord]:
        with self._lock:
            return sorted(self._records.values(), key=lambda r: r.name)

    def get(self, name: str, param: str = "name") -> AdapterRecord:
        fmt.check_name(name, param)
        with self._lock:
            record = self._records.get(name)
        if record is None:
            raise AdapterNotFound(f"adapter {name!r} not found", param)
        return record

    def __len__(self) -> int:
        return len(self._records)

    @property
    def resident_count(self) -> int:
        return len(self._cache)

    @property
    def cached_bytes(self) -> int:
        return self._cached_bytes

    def is_resident(self, record: AdapterRecord) -> bool:
        with self._lock:
            cached = self._cache.get(record.name)
        return cached is not None and cached[0] == record.version

    def sha256(self, record: AdapterRecord) -> str:
        if record.sha256 is None:
            with self._name_lock(record.name):
                data = (self.store.path(record.name) / fmt.WEIGHTS_FILE).read_bytes()
            record.sha256 = hashlib.sha256(data).hexdigest()
        return record.sha256

    def files(self, name: str) -> dict[str, bytes]:
        """The two PEFT files, read together so a concurrent overwrite cannot mix them."""
        self.get(name)
        with self._name_lock(name):
            record = self.get(name)
            folder = self.store.path(record.name)
            return {f: (folder / f).read_bytes() for f in (fmt.CONFIG_FILE, fmt.WEIGHTS_FILE)}

    def load(self, name: str, param: str = "adapter") -> tuple[AdapterRecord, LoraAdapter]:
        """The record and its weights on the serving device, from the LRU cache or from disk."""
        record = self.get(name, param)
        cached = self._cached(record)
        if cached is not None:
            self.cache_hits += 1
            return record, cached
        self.cache_misses += 1
        with self._name_lock(name):
            record = self.get(name, param)  # it may have been replaced or deleted meanwhile
            cached = self._cached(record)
            if cached is not None:
                return record, cached
            tensors = load_file(self.store.path(name) / fmt.WEIGHTS_FILE)
            adapter = fmt.build_adapter(tensors, record.config).to(
                self.base.device, self.base.dtype
            )
            self._remember(record, adapter)
        return record, adapter

    # --- writes ---------------------------------------------------------------------------
    def upload(
        self, name: str, config_data: bytes, weights_data: bytes, *, overwrite: bool = False
    ) -> AdapterRecord:
        """Validate PEFT files strictly, then write and register them; nothing changes on error."""
        fmt.check_name(name)
        if not overwrite and self.store.exists(name):
            raise AdapterExists(f"adapter {name!r} already exists; pass overwrite=true", "name")
        self.check_room(name)
        config = fmt.parse_config(config_data, self.base.linears, self.max_rank)
        if weights_data.startswith(_PICKLE_MAGIC):
            raise InvalidAdapter(
                "weights look like a pickled .bin file; only safetensors is accepted", "weights"
            )
        try:
            tensors = load_safetensors(weights_data)
        except (SafetensorError, ValueError, RuntimeError) as exc:
            raise InvalidAdapter(
                f"weights are not a valid safetensors file: {exc}", "weights"
            ) from exc
        fmt.check_header(fmt.header_of(tensors), config, self.base.linears)
        adapter = fmt.build_adapter(tensors, config)
        return self.add(name, adapter, source="upload", overwrite=overwrite)

    def add(
        self,
        name: str,
        adapter: LoraAdapter,
        *,
        source: Source,
        overwrite: bool = False,
        metadata: Mapping[str, str] | None = None,
    ) -> AdapterRecord:
        """Write a checked adapter atomically (fp32, our metadata in the header) and register it."""
        fmt.check_name(name)
        created_at = int(time.time())
        header = {
            "format": "pt",
            "created_at": str(created_at),
            "source": source,
            "base_model": self.base.name,
            "base_fingerprint": self.base.fingerprint,
            **(metadata or {}),
        }
        tensors = {}
        for module, m in adapter.modules.items():
            tensors[fmt.tensor_key(module, "lora_A")] = m.lora_A.detach().float().cpu().contiguous()
            tensors[fmt.tensor_key(module, "lora_B")] = m.lora_B.detach().float().cpu().contiguous()
        weights = save(tensors, metadata=header)
        staged = self.store.stage(
            {
                fmt.CONFIG_FILE: fmt.config_json(adapter.config, self.base.name),
                fmt.WEIGHTS_FILE: weights,
            }
        )
        try:
            with self._name_lock(name):
                if not overwrite and self.store.exists(name):
                    raise AdapterExists(
                        f"adapter {name!r} already exists; pass overwrite=true", "name"
                    )
                self.check_room(name)
                self.store.commit(staged, name)
                record = AdapterRecord(
                    name=name,
                    config=adapter.config,
                    size_bytes=len(weights),
                    created_at=created_at,
                    source=source,
                    metadata=header,
                    version=self._next_version(),
                    sha256=hashlib.sha256(weights).hexdigest(),
                )
                with self._lock:
                    self._records[name] = record
                    self._forget(name)
        finally:
            self.store.discard(staged)
        self._notify(name)
        return record

    def delete(self, name: str) -> None:
        self.get(name)
        with self._name_lock(name):
            self.get(name)
            self.store.delete(name)
            with self._lock:
                self._records.pop(name, None)
                self._forget(name)
        self._notify(name)

    def check_room(self, name: str) -> None:
        """A new name needs room under MAX_ADAPTERS; replacing one does not."""
        with self._lock:
            full = name not in self._records and len(self._records) >= self.max_adapters
        if full:
            raise TooManyAdapters(
                f"the store holds the maximum of {self.max_adapters} adapters; delete some first",
                "name",
            )

    def on_change(self, listener: Callable[[str], None]) -> None:
        """Call `listener(name)` after an adapter is replaced or deleted (to drop merged copies)."""
        self._listeners.append(listener)

    # --- internals ------------------------------------------------------------------------
    def _name_lock(self, name: str) -> threading.Lock:
        with self._lock:
            lock = self._name_locks.get(name)
            if lock is None:
                lock = threading.Lock()
                self._name_locks[name] = lock
            return lock

    def _next_version(self) -> int:
        with self._lock:
            self._versions += 1
            return self._versions

    def _cached(self, record: AdapterRecord) -> LoraAdapter | None:
        with self._lock:
            cached = self._cache.get(record.name)
            if cached is None or cached[0] != record.version:
                return None
            self._cache.move_to_end(record.name)
            return cached[1]

    def _remember(self, record: AdapterRecord, adapter: LoraAdapter) -> None:
        with self._lock:
            if self._records.get(record.name) is not record or adapter.nbytes > self.cache_bytes:
                return
            self._forget(record.name)
            self._cache[record.name] = (record.version, adapter)
            self._cached_bytes += adapter.nbytes
            while self._cached_bytes > self.cache_bytes:
                _, (_, evicted) = self._cache.popitem(last=False)
                self._cached_bytes -= evicted.nbytes

    def _forget(self, name: str) -> None:
        """Drop a cached copy; the caller holds self._lock."""
        cached = self._cache.pop(name, None)
        if cached is not None:
            self._cached_bytes -= cached[1].nbytes

    def _notify(self, name: str) -> None:
        for listener in self._listeners:
            listener(name)
