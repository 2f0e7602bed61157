"""The adapters this service knows: an index over the store, a lock per name, a weight cache."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping

from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import load_file, save

from app.adapters import peft_format as fmt
from app.adapters.records import (
    UPLOADED_SHA256,
    AdapterProblem,
    AdapterRecord,
    BaseInfo,
    Source,
    broken_record,
    problem_of,
    read_record,
)
from app.adapters.store import AdapterStore
from app.errors import (
    AdapterExists,
    AdapterNotFound,
    InvalidAdapter,
    InvalidName,
    TooManyAdapters,
    shorten,
)
from app.lora import LoraAdapter

__all__ = ["AdapterProblem", "AdapterRecord", "AdapterRegistry", "BaseInfo", "Source"]

log = logging.getLogger(__name__)

_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


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
        """Index every adapter folder, a broken one as broken. Returns {name: why} of those."""
        self.store.recover()
        broken: dict[str, str] = {}
        for name in self.store.names():
            try:
                fmt.check_name(name)
            except InvalidName:
                log.warning("ignoring adapter folder %s: not a valid adapter name", shorten(name))
                continue
            folder = self.store.path(name)
            record = read_record(folder, name, self.base, self.max_rank, self._next_version())
            if record.error is not None:
                log.warning("adapter %r is broken: %s", name, record.error.message)
                broken[name] = record.error.message
            with self._lock:
                self._records[name] = record
        log.info("registered %d adapters, %d of them broken", len(self._records), len(broken))
        return broken

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

    def sha256(self, record: AdapterRecord) -> str | None:
        """Of adapter_model.safetensors as stored (and downloaded); None if it is missing."""
        if record.sha256 is None:
            try:
                with (
                    self._name_lock(record.name),
                    (self.store.path(record.name) / fmt.WEIGHTS_FILE).open("rb") as f,
                ):
                    record.sha256 = hashlib.file_digest(f, "sha256").hexdigest()
            except OSError:
                return None
        return record.sha256

    def files(self, name: str) -> dict[str, bytes]:
        """The two PEFT files, read together so a concurrent overwrite cannot mix them."""
        self.get(name).ready_config("name")
        with self._name_lock(name):
            record = self.get(name)
            record.ready_config("name")
            folder = self.store.path(record.name)
            return {f: (folder / f).read_bytes() for f in (fmt.CONFIG_FILE, fmt.WEIGHTS_FILE)}

    def load(self, name: str, param: str = "adapter") -> tuple[AdapterRecord, LoraAdapter]:
        """The record and its weights on the serving device, from the LRU cache or from disk.

        404 for an unknown name, 409 `adapter_broken` for one that failed validation, at the
        scan or now, when its weights are first read.
        """
        record = self.get(name, param)
        record.ready_config(param)
        cached = self._cached(record)
        if cached is not None:
            self.cache_hits += 1
            return record, cached
        self.cache_misses += 1
        with self._name_lock(name):
            record = self.get(name, param)  # it may have been replaced or deleted meanwhile
            config = record.ready_config(param)
            cached = self._cached(record)
            if cached is not None:
                return record, cached
            try:
                tensors = load_file(self.store.path(name) / fmt.WEIGHTS_FILE)
                fmt.check_header(fmt.header_of(tensors), config, self.base.linears)
                adapter = fmt.build_adapter(tensors, config, self.base.dtype)
            except (InvalidAdapter, SafetensorError, FileNotFoundError) as exc:
                # Changed on disk since the scan: list it as broken from now on.
                raise self._mark_broken(record, exc).broken_error(param) from exc
            adapter = adapter.to(self.base.device, self.base.dtype)
            self._remember(record, adapter)
        return record, adapter

    # --- writes ---------------------------------------------------------------------------
    def upload(
        self, name: str, config_data: bytes, weights_data: bytes, *, overwrite: bool = False
    ) -> AdapterRecord:
        """Validate PEFT files strictly, then write and register them; nothing changes on error."""
        fmt.check_name(name)
        self._check_free(name, overwrite)
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
        adapter = fmt.build_adapter(tensors, config, self.base.dtype)
        # We store a rewritten file (fp32, our header), so keep the digest of what was sent.
        uploaded = {UPLOADED_SHA256: hashlib.sha256(weights_data).hexdigest()}
        return self.add(name, adapter, source="upload", overwrite=overwrite, metadata=uploaded)

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
                self._check_free(name, overwrite)
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
        """Remove an adapter, a broken one too; 404 for a name the store does not manage."""
        self.get(name)
        with self._name_lock(name):
            self.get(name)
            try:
                self.store.delete(name)
            except AdapterNotFound:  # gone, or no longer ours, since the scan: unlist it
                self._unlist(name)
                raise
            self._unlist(name)
        self._notify(name)

    def check_room(self, name: str) -> None:
        """A new name must not be a foreign entry's (409) and needs room under MAX_ADAPTERS."""
        self.store.check_ours(name)
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
    def _check_free(self, name: str, overwrite: bool) -> None:
        """409: `name_taken` for a foreign entry; `adapter_exists` unless overwriting."""
        if self.store.check_ours(name) == "adapter" and not overwrite:
            raise AdapterExists(f"adapter {name!r} already exists; pass overwrite=true", "name")

    def _unlist(self, name: str) -> None:
        with self._lock:
            self._records.pop(name, None)
            self._forget(name)

    def _mark_broken(self, record: AdapterRecord, exc: BaseException) -> AdapterRecord:
        folder = self.store.path(record.name)
        broken = broken_record(
            folder, record.name, problem_of(exc), self._next_version(), record.config
        )
        log.warning("adapter %r is broken: %s", record.name, broken.error)
        with self._lock:
            if self._records.get(record.name) is record:
                self._records[record.name] = broken
                self._forget(record.name)
        return broken

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
