"""The adapter registry: reads (reads.py) and creating, replacing and deleting adapters, with
checks first, then one transaction per change.

A change holds its project's row lock (SQLite: the database's one writer lock) from the first
check to the commit, so two writers of one name, on any replicas, take turns: each finds the
name as the other left it, and a name always points at a whole, stored version. Files are
written create-only under the version id before the commit that makes them reachable.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping

from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save
from sqlalchemy import Connection

from app.adapters import catalog
from app.adapters import peft_format as fmt
from app.adapters.catalog import VersionRow
from app.adapters.reads import RegistryReads
from app.adapters.records import UPLOADED_SHA256, AdapterRecord, BaseInfo, Source
from app.adapters.versions import (
    VersionFiles,
    canonical_safetensors,
    safetensors_header,
    version_id,
)
from app.errors import AdapterExists, AdapterNotFound, InvalidAdapter, TooManyAdapters
from app.lora import LoraAdapter
from app.state.tables import DEFAULT_PROJECT

__all__ = ["AdapterRecord", "AdapterRegistry", "BaseInfo"]
_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


class StoredBytesQuota(TooManyAdapters):
    code = "storage_quota_exceeded"


class AdapterRegistry(RegistryReads):
    """Resolves, lists, loads and writes adapters; thread-safe."""

    def upload(
        self,
        name: str,
        config_data: bytes,
        weights_data: bytes,
        *,
        overwrite: bool = False,
        project: str = DEFAULT_PROJECT,
    ) -> AdapterRecord:
        """Validate PEFT files strictly, then store and register them; nothing changes on error."""
        fmt.check_name(name)
        self.check_room(name, project, overwrite)
        adapter = self._checked(config_data, weights_data)
        # We store a rewritten file (fp32, our header), so keep the digest of what was sent.
        uploaded = {UPLOADED_SHA256: hashlib.sha256(weights_data).hexdigest()}
        return self.add(
            name, adapter, source="upload", overwrite=overwrite, metadata=uploaded, project=project
        )

    def add(
        self,
        name: str,
        adapter: LoraAdapter,
        *,
        source: Source,
        overwrite: bool = False,
        metadata: Mapping[str, str] | None = None,
        project: str = DEFAULT_PROJECT,
        within: Callable[[Connection], None] | None = None,
    ) -> AdapterRecord:
        """Store a checked adapter (fp32, our metadata in the header) as a version of `name`.

        The header holds nothing that changes between two writes of the same weights, so the
        same adapter always makes the same version. `within(conn)` runs in the registering
        transaction, before its commit: if it raises, nothing is registered.
        """
        fmt.check_name(name)
        header = {
            "format": "pt",
            "source": source,
            "base_model": self.base.name,
            "base_fingerprint": self.base.fingerprint,
            **(metadata or {}),
        }
        tensors = {}
        for module, m in adapter.modules.items():
            tensors[fmt.tensor_key(module, "lora_A")] = m.lora_A.detach().float().cpu().contiguous()
            tensors[fmt.tensor_key(module, "lora_B")] = m.lora_B.detach().float().cpu().contiguous()
        files = {
            fmt.CONFIG_FILE: fmt.config_json(adapter.config, self.base.name),
            fmt.WEIGHTS_FILE: canonical_safetensors(save(tensors, metadata=header)),
        }
        return self._publish(project, name, files, header, source, overwrite, within)

    def import_files(
        self,
        name: str,
        config_data: bytes,
        weights_data: bytes,
        project: str = DEFAULT_PROJECT,
    ) -> AdapterRecord:
        """Register files of an older store, checked as an upload is, kept byte for byte."""
        fmt.check_name(name)
        self._checked(config_data, weights_data)
        header = _safetensors_metadata(weights_data)
        source = "training" if header.get("source") == "training" else "upload"
        files = {fmt.CONFIG_FILE: config_data, fmt.WEIGHTS_FILE: weights_data}
        created = header.get("created_at", "")
        when = (
            int(created) if created.isascii() and created.isdigit() and len(created) < 12 else None
        )
        return self._publish(project, name, files, header, source, False, created_at=when)

    def delete(self, name: str, project: str = DEFAULT_PROJECT) -> None:
        """Remove a name, its history, and the versions nothing else in the project uses."""
        fmt.check_name(name)
        with self.db.write() as conn:
            catalog.lock_project(conn, project)
            if catalog.current(conn, project, name) is None:
                raise AdapterNotFound(f"adapter {name!r} not found", "name")
            orphans = catalog.remove(conn, project, name)
            # Under the lock, before the commit: a writer of the same content waits, then
            # finds neither row nor files, and stores both again.
            for version in orphans:
                VersionFiles.delete(self.objects, project, version)
        self._forget_name(project, name)
        for version in orphans:
            self._forget_version(version)

    def check_room(
        self,
        name: str,
        project: str = DEFAULT_PROJECT,
        overwrite: bool = True,
        within: Connection | None = None,
    ) -> None:
        """409 if the name is taken (unless overwriting); 413 past the project's adapter quota."""
        with self.db.read(within) as conn:
            self._check_room(conn, project, name, overwrite)

    # --- internals ------------------------------------------------------------------------
    def _checked(self, config_data: bytes, weights_data: bytes) -> LoraAdapter:
        base = self.base
        config = fmt.parse_config(
            config_data, base.linears, self.max_rank, base.conv1d, base.frozen
        )
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
        return fmt.build_adapter(tensors, config, self.base.dtype)

    def _check_room(
        self, conn: Connection, project: str, name: str, overwrite: bool
    ) -> catalog.VersionRow | None:
        current = catalog.current(conn, project, name)
        if current is not None:
            if not overwrite:
                raise AdapterExists(f"adapter {name!r} already exists; pass overwrite=true", "name")
            return current
        limit = catalog.quota_of(conn, project, "max_adapters") or self.max_adapters
        if catalog.count(conn, project) >= limit:
            raise TooManyAdapters(
                f"the project holds the maximum of {limit} adapters; delete some first", "name"
            )
        return None

    def _publish(
        self,
        project: str,
        name: str,
        files: dict[str, bytes],
        metadata: Mapping[str, str],
        source: str,
        overwrite: bool,
        within: Callable[[Connection], None] | None = None,
        created_at: int | None = None,
    ) -> AdapterRecord:
        config, weights = files[fmt.CONFIG_FILE], files[fmt.WEIGHTS_FILE]
        version = version_id(config, weights)
        now = int(time.time())
        row = VersionRow(
            project=project,
            name=name,
            id=version,
            size_bytes=len(weights),
            stored_bytes=len(config) + len(weights),
            weights_sha256=hashlib.sha256(weights).hexdigest(),
            config=config.decode(),
            metadata=json.dumps(dict(metadata)),
            source=source,
            created_at=created_at or now,
            problem=None,
        )
        created = False
        try:
            with self.db.write() as conn:
                catalog.lock_project(conn, project)
                current = self._check_room(conn, project, name, overwrite)
                if current is None or current.id != version:  # the same files again: no change
                    if not catalog.has_version(conn, project, version):
                        self._check_bytes(conn, project, row.stored_bytes)
                        created = VersionFiles.write(self.objects, project, version, files)
                        catalog.add_version(conn, row)
                    catalog.point(conn, project, name, version, now)
                if within is not None:
                    within(conn)
        except BaseException:
            if created:  # ours alone: the project's lock kept any other writer of it waiting
                VersionFiles.delete(self.objects, project, version)
            raise
        self._forget_name(project, name)
        return self.resolve(name, "name", project)

    def _check_bytes(self, conn: Connection, project: str, adding: int) -> None:
        limit = catalog.quota_of(conn, project, "max_stored_bytes")
        if limit is not None and catalog.stored_bytes(conn, project) + adding > limit:
            raise StoredBytesQuota(
                f"the project may store {limit} bytes of adapters; this one needs {adding} more "
                "than is free. Delete some first",
                "weights",
            )


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors file's JSON header (already checked as valid)."""
    metadata = safetensors_header(data)[1].get("__metadata__") or {}
    return {str(k): str(v) for k, v in metadata.items()}
