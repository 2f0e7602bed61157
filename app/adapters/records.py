"""What the registry knows of an adapter version without loading its weights: ready or broken."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from app.adapters import peft_format as fmt
from app.adapters.catalog import VersionRow
from app.errors import AdapterBroken, ServiceError, shorten
from app.lora import LoraConfig
from app.model import BaseModel

Source = Literal["upload", "training", "composition"]
Status = Literal["ready", "broken"]
# The safetensors header entry that keeps the digest of the weights file as it was uploaded.
UPLOADED_SHA256 = "uploaded_sha256"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class BaseInfo:
    """What the registry needs of the base model: its linear layers, name, device, dtype."""

    linears: Mapping[str, tuple[int, int]]  # module -> (in_features, out_features)
    name: str
    fingerprint: str
    device: torch.device
    dtype: torch.dtype
    conv1d: frozenset[str] = frozenset()  # linears that were GPT-2 Conv1Ds (fan_in_fan_out)
    frozen: frozenset[str] = frozenset()  # a causal base's embeddings and head: never targets


def base_info(base: BaseModel) -> BaseInfo:
    """What the registry needs to know of `base`."""
    linears = {n: (i.in_features, i.out_features) for n, i in base.linears().items()}
    return BaseInfo(
        linears, base.name, base.fingerprint, base.device, base.dtype, base.conv1d, base.frozen
    )


@dataclass(frozen=True)
class AdapterProblem:
    """Why an adapter version cannot be served: a stable code and a message for people."""

    code: str
    message: str


@dataclass(frozen=True)
class AdapterRecord:
    """One immutable version of a named adapter of a project, without its weights."""

    project: str
    name: str
    version: str  # the version id: sha256 of its files, so caches keyed by it never go stale
    config: LoraConfig | None  # None when the stored config does not fit this base
    size_bytes: int  # of adapter_model.safetensors
    stored_bytes: int  # of both files
    sha256: str  # of adapter_model.safetensors as stored (and downloaded)
    created_at: int
    source: Source
    metadata: dict[str, str]
    error: AdapterProblem | None = None

    @property
    def status(self) -> Status:
        return "ready" if self.error is None else "broken"

    @property
    def uploaded_sha256(self) -> str | None:
        """The digest of the weights file exactly as uploaded (None for trained adapters)."""
        value = self.metadata.get(UPLOADED_SHA256)
        return value if value is not None and _HEX64.fullmatch(value) else None

    def ready_config(self, param: str = "adapter") -> LoraConfig:
        """The config of a servable adapter; 409 `adapter_broken` for a broken one."""
        if self.error is not None or self.config is None:
            raise self.broken_error(param)
        return self.config

    def broken_error(self, param: str = "adapter") -> AdapterBroken:
        reason = self.error.message if self.error is not None else "no valid config"
        return AdapterBroken(
            f"adapter {self.name!r} is broken ({reason}); an admin can replace it "
            "(overwrite=true) or delete it",
            param,
        )


def record_of(row: VersionRow, base: BaseInfo, max_rank: int) -> AdapterRecord:
    """The record of a database row; a config that does not fit this base makes it broken."""
    error = None
    config = None
    if row.problem:
        problem = json.loads(row.problem)
        error = AdapterProblem(problem["code"], problem["message"])
    try:
        config = fmt.parse_config(
            row.config.encode(), base.linears, max_rank, base.conv1d, base.frozen
        )
    except ServiceError as exc:
        error = error or AdapterProblem(exc.code, exc.message)
    metadata = json.loads(row.metadata)
    source = metadata.get("source")
    return AdapterRecord(
        project=row.project,
        name=row.name,
        version=row.id,
        config=config,
        size_bytes=row.size_bytes,
        stored_bytes=row.stored_bytes,
        sha256=row.weights_sha256,
        created_at=row.created_at,
        source=source if source in ("upload", "training", "composition") else "upload",
        metadata=metadata,
        error=error,
    )


# An absolute path inside a library's message (safetensors puts them in its OSErrors' text).
_ABSOLUTE_PATH = re.compile(r"/[^\s'\"]+")


def _without_paths(text: str) -> str:
    """Every absolute path in `text` cut to its last part: clients never see server paths."""
    return _ABSOLUTE_PATH.sub(lambda m: Path(m.group()).name or "/", text)


def problem_of(exc: BaseException) -> AdapterProblem:
    """The code and message an error gives a broken adapter (no server paths in it)."""
    if isinstance(exc, ServiceError):
        return AdapterProblem(exc.code, exc.message)
    if isinstance(exc, OSError):
        where = Path(exc.filename).name if exc.filename else "the adapter's files"
        # Object stores put a debug dump of their error after the first line: not for users.
        reason = exc.strerror or _without_paths(str(exc).partition("\n")[0])
        return AdapterProblem("unreadable", f"cannot read {where}: {shorten(reason, 256)}")
    reason = shorten(_without_paths(str(exc)), 256)
    return AdapterProblem("invalid_adapter", f"{fmt.WEIGHTS_FILE}: {reason}")
