"""Reading the adapters of every project: names -> immutable versions in the database, files in
the object store, and loaded weights kept by version id (residency.py).

Replicas share the database and the store. A name is resolved when a request arrives, from a
cache that may be at most `ttl_ms` old (a local write clears it at once), so after another
replica replaces or deletes a name, this one stops serving the old version within `ttl_ms`.
Versions never change, so weights cached by version id are never stale.
"""

from __future__ import annotations

import builtins
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Self, cast

from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from sqlalchemy import Connection

from app.adapters import catalog
from app.adapters import peft_format as fmt
from app.adapters.records import AdapterRecord, BaseInfo, problem_of, record_of
from app.adapters.residency import WeightCache
from app.adapters.versions import VersionFiles, split_ref
from app.errors import AdapterNotFound, InvalidAdapter
from app.lora import LoraAdapter
from app.state import Database, ObjectStore
from app.state.tables import DEFAULT_PROJECT

log = logging.getLogger(__name__)
_MAX_CACHED_NAMES = 100_000  # resolved names kept; past it the cache starts over
_MISS = object()  # not in the name cache, or too old


class RegistryReads:
    """Resolves, lists and loads adapters; thread-safe. AdapterRegistry adds the writes."""

    def __init__(
        self,
        db: Database,
        objects: ObjectStore,
        base: BaseInfo,
        max_rank: int,
        cache_bytes: int,
        max_adapters: int = 100_000,
        ttl_ms: float = 1000.0,
    ) -> None:
        self.db = db
        self.objects = objects
        self.base = base
        self.max_rank = max_rank
        self.max_adapters = max_adapters
        self.ttl_s = ttl_ms / 1000
        self._lock = threading.Lock()  # guards the dicts below; never held during I/O
        self._names: dict[tuple[str, str], tuple[float, AdapterRecord | None]] = {}
        self._by_version: dict[str, AdapterRecord] = {}
        self._parsed: dict[tuple[str, str, str, str | None], AdapterRecord] = {}
        # Loaded weights; a Ray replica bounds their number by its multiplexer's capacity.
        self.weights = WeightCache(cache_bytes)
        self.cache_hits = 0  # load() answered from memory
        self.cache_misses = 0  # load() read the weights from the store
        self._listeners: list[Callable[[str], None]] = []

    @classmethod
    def local(
        cls, root: Path, base: BaseInfo, max_rank: int = 64, cache_bytes: int = 1 << 30
    ) -> Self:
        """A registry of its own: SQLite and a store folder under `root` (benchmarks, tests)."""
        db = Database(f"sqlite:///{root / 'loraserve.db'}")
        db.migrate()
        return cls(db, ObjectStore(f"file://{root / 'store'}"), base, max_rank, cache_bytes)

    # --- reads ----------------------------------------------------------------------------
    def resolve(
        self, ref: str, param: str = "adapter", project: str = DEFAULT_PROJECT
    ) -> AdapterRecord:
        """The version `ref` (`name` or `name@version`) means now: 404 if there is none."""
        record = self._cached_name(project, ref)
        if record is _MISS:  # parsed only here: a cached ref was checked when it was cached
            name, pin = split_ref(ref, param)
            record = self._lookup(project, name, pin)
            with self._lock:
                if len(self._names) >= _MAX_CACHED_NAMES:
                    self._names.clear()
                self._names[(project, ref)] = (time.monotonic() + self.ttl_s, record)
                if record is not None:
                    self._by_version[record.version] = record
        if record is None:
            name, pin = split_ref(ref, param)
            what = f"adapter {name!r}" if pin is None else f"version {pin!r} of adapter {name!r}"
            raise AdapterNotFound(f"{what} not found", param)
        return cast(AdapterRecord, record)

    def versions_for(
        self, refs: Sequence[str | None], param: str, project: str = DEFAULT_PROJECT
    ) -> builtins.list[str | None]:
        """Each row's version id (None for none): 404 for an unknown one, 409 for a broken one."""
        records = {r: self.resolve(r, param, project) for r in dict.fromkeys(refs) if r is not None}
        for record in records.values():
            record.ready_config(param)
        return [None if r is None else records[r].version for r in refs]

    def needs_lookup(self, refs: Sequence[str | None], project: str = DEFAULT_PROJECT) -> bool:
        """Whether resolving `refs` would read the database (some are not cached, or stale):
        the HTTP layer then resolves them off the event loop."""
        return any(r is not None and self._cached_name(project, r) is _MISS for r in refs)

    def _cached_name(self, project: str, ref: str) -> AdapterRecord | object | None:
        """The cached answer for a ref (a record, or None for a known miss), or _MISS."""
        now = time.monotonic()
        with self._lock:
            hit = self._names.get((project, ref))
        return hit[1] if hit is not None and hit[0] > now else _MISS

    def get(self, name: str, param: str = "name", project: str = DEFAULT_PROJECT) -> AdapterRecord:
        """The name's current version, read from the database now (not from the cache)."""
        fmt.check_name(name, param)
        with self._lock:
            self._names.pop((project, name), None)
        return self.resolve(name, param, project)

    def list(self, project: str = DEFAULT_PROJECT) -> builtins.list[AdapterRecord]:
        with self.db.read() as conn:
            rows = catalog.all_current(conn, project)
        return [self._record(r) for r in rows]

    def history(
        self, name: str, project: str = DEFAULT_PROJECT
    ) -> builtins.list[tuple[AdapterRecord, int]]:
        """Every version the name has served, newest first, with when it started serving it."""
        fmt.check_name(name)
        with self.db.read() as conn:
            rows = catalog.history(conn, project, name)
        if not rows:
            raise AdapterNotFound(f"adapter {name!r} not found", "name")
        return [(self._record(r), at) for r, at in rows]

    def count(self, project: str | None = None) -> int:
        """Names in the project (in all projects for None)."""
        with self.db.read() as conn:
            return catalog.count(conn, project)

    def quota(self, project: str, column: str, within: Connection | None = None) -> int | None:
        """A project's own limit (`max_adapters`, `max_queued_jobs`, `max_stored_bytes`)."""
        with self.db.read(within) as conn:
            return catalog.quota_of(conn, project, column)  # type: ignore[no-any-return]

    def files(self, ref: str, project: str = DEFAULT_PROJECT) -> dict[str, bytes]:
        """The two PEFT files of a version, exactly as stored."""
        record = self.resolve(ref, "name", project)
        record.ready_config("name")
        try:
            return VersionFiles.read(self.objects, record.project, record.version)
        except FileNotFoundError as exc:
            with self.db.read() as conn:
                still = catalog.has_version(conn, record.project, record.version)
            if not still:  # deleted since this request resolved it
                raise AdapterNotFound(f"adapter {record.name!r} not found", "name") from exc
            raise self._mark_broken(record, exc).broken_error("name") from exc

    def load(self, version: str, param: str = "adapter") -> tuple[AdapterRecord, LoraAdapter]:
        """A version's record and weights on the serving device, from the cache or the store.

        409 `adapter_broken` when its files cannot be read or no longer pass the checks.
        """
        record = self._record_of_version(version, param)
        config = record.ready_config(param)
        cached = self.weights.get(version)
        if cached is not None:
            self.cache_hits += 1
            return record, cached
        self.cache_misses += 1
        with self.weights.load_lock(version):
            cached = self.weights.get(version)
            if cached is not None:
                return record, cached
            try:
                data = self._read_weights(record, param)
                tensors = load_safetensors(data)
                fmt.check_header(fmt.header_of(tensors), config, self.base.linears)
                adapter = fmt.build_adapter(tensors, config, self.base.dtype)
            except FileNotFoundError as exc:  # deleted since the request resolved it
                raise AdapterNotFound(f"adapter {record.name!r} not found", param) from exc
            except (InvalidAdapter, SafetensorError) as exc:
                raise self._mark_broken(record, exc).broken_error(param) from exc
            adapter = adapter.to(self.base.device, self.base.dtype)
            self.weights.put(version, adapter)
        return record, adapter

    @property
    def resident_count(self) -> int:
        return len(self.weights)

    @property
    def cached_bytes(self) -> int:
        return self.weights.nbytes

    def is_resident(self, record: AdapterRecord) -> bool:
        return record.version in self.weights

    def evict(self, version: str) -> None:
        """Drop a version's weights from memory (a Ray replica's multiplexer let it go); the
        next request for it reads them again."""
        self.weights.drop(version)

    def resident_versions(self) -> builtins.list[str]:
        """Versions with weights in memory, least recently used first."""
        return self.weights.versions()

    def on_change(self, listener: Callable[[str], None]) -> None:
        """Call `listener(version)` when no name uses a version any more (to drop copies)."""
        self._listeners.append(listener)

    # --- internals ------------------------------------------------------------------------
    def _lookup(self, project: str, name: str, pin: str | None) -> AdapterRecord | None:
        with self.db.read() as conn:
            if pin is None:
                row = catalog.current(conn, project, name)
            else:
                matches = [
                    r for r, _ in catalog.history(conn, project, name) if r.id.startswith(pin)
                ]
                row = matches[0] if len({r.id for r in matches}) == 1 else None
        return None if row is None else self._record(row)

    def _record(self, row: catalog.VersionRow) -> AdapterRecord:
        """The record of a row; parsed once per (project, name, version, problem), since a
        refresh of a name usually finds the version it found before."""
        key = (row.project, row.name, row.id, row.problem)
        with self._lock:
            record = self._parsed.get(key)
        if record is None:
            record = record_of(row, self.base, self.max_rank)
            with self._lock:
                if len(self._parsed) >= _MAX_CACHED_NAMES:
                    self._parsed.clear()
                self._parsed[key] = record
        return record

    def _record_of_version(self, version: str, param: str) -> AdapterRecord:
        with self._lock:
            record = self._by_version.get(version)
        if record is None:
            with self.db.read() as conn:
                row = catalog.by_id(conn, version)
            if row is None:
                raise AdapterNotFound(f"adapter version {version!r} not found", param)
            record = self._record(row)
            with self._lock:
                self._by_version[version] = record
        return record

    def _read_weights(self, record: AdapterRecord, param: str) -> bytes:
        """The weights of a version, from the project the record came from, or, if that
        project deleted it since, from any project that still has the same version: the
        bytes are the same. FileNotFoundError when none has it; a version whose row is still
        there but whose file is gone is marked broken first."""
        key = VersionFiles.key(record.project, record.version, fmt.WEIGHTS_FILE)
        try:
            return self.objects.read(key)
        except FileNotFoundError as exc:
            # A delete removes the files before it commits, under the project's lock: wait for
            # that lock so its outcome is settled, then read once more, since the same content
            # may have been stored again meanwhile. Only a row whose file is still gone is broken.
            with self.db.write() as conn:
                catalog.lock_project(conn, record.project)
                mine = catalog.has_version(conn, record.project, record.version)
                other = catalog.by_id(conn, record.version)
                if mine:
                    try:
                        return self.objects.read(key)
                    except FileNotFoundError:
                        pass
            if mine:
                raise self._mark_broken(record, exc).broken_error(param) from exc
            self._forget_version(record.version)
            if other is None:
                raise
            key = VersionFiles.key(other.project, record.version, fmt.WEIGHTS_FILE)
            return self.objects.read(key)

    def _mark_broken(self, record: AdapterRecord, exc: BaseException) -> AdapterRecord:
        problem = problem_of(exc)
        log.warning("adapter %r version %s is broken: %s", record.name, record.version, problem)
        with self.db.write() as conn:
            catalog.set_problem(conn, record.project, record.version, json.dumps(problem.__dict__))
        self._forget_version(record.version)
        return AdapterRecord(**{**record.__dict__, "error": problem})

    def _forget_name(self, project: str, name: str) -> None:
        with self._lock:
            for key in [k for k in self._names if k[0] == project and k[1].split("@")[0] == name]:
                del self._names[key]

    def _forget_version(self, version: str) -> None:
        with self._lock:
            self._by_version.pop(version, None)
            for key in [k for k, (_, r) in self._names.items() if r and r.version == version]:
                del self._names[key]
        self.weights.drop(version)
        for listener in self._listeners:
            listener(version)
