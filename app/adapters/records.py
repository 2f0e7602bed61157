"""What the registry knows of an adapter folder without loading its weights: ready or broken."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError, safe_open

from app.adapters import peft_format as fmt
from app.errors import AdapterBroken, InvalidAdapter, ServiceError, shorten
from app.lora import LoraConfig

Source = Literal["upload", "training"]
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


@dataclass(frozen=True)
class AdapterProblem:
    """Why an adapter folder cannot be served: a stable code and a message for people."""

    code: str
    message: str


@dataclass
class AdapterRecord:
    """What is known about an adapter without reading its weights."""

    name: str
    config: LoraConfig | None  # None when the config itself is what is broken
    size_bytes: int | None  # of the weights file; None when it is missing
    created_at: int
    source: Source
    metadata: dict[str, str]
    version: int  # changes on every write, so caches keyed by it never serve stale weights
    sha256: str | None = field(default=None, repr=False)  # of the weights file; computed lazily
    error: AdapterProblem | None = None  # set when the folder failed validation

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


def read_record(
    folder: Path, name: str, base: BaseInfo, max_rank: int, version: int
) -> AdapterRecord:
    """Check a folder's config and weights header; a folder that fails is a broken record."""
    try:
        return _read_ready(folder, name, base, max_rank, version)
    except (ServiceError, OSError, SafetensorError, ValueError) as exc:
        return broken_record(folder, name, problem_of(exc), version)


def broken_record(
    folder: Path, name: str, problem: AdapterProblem, version: int, config: LoraConfig | None = None
) -> AdapterRecord:
    """A record that lists the folder as broken, with what could be read without trusting it."""
    weights = folder / fmt.WEIGHTS_FILE
    try:
        size: int | None = weights.stat().st_size
    except OSError:
        size = None
    try:
        created = int(folder.stat().st_mtime)
    except OSError:
        created = 0
    return AdapterRecord(name, config, size, created, "upload", {}, version, error=problem)


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
        where = Path(exc.filename).name if exc.filename else "the adapter folder"
        reason = exc.strerror or _without_paths(str(exc))
        return AdapterProblem("unreadable", f"cannot read {where}: {reason}")
    reason = shorten(_without_paths(str(exc)), 256)
    return AdapterProblem("invalid_adapter", f"{fmt.WEIGHTS_FILE}: {reason}")


def _read_ready(
    folder: Path, name: str, base: BaseInfo, max_rank: int, version: int
) -> AdapterRecord:
    weights = folder / fmt.WEIGHTS_FILE
    if not weights.is_file():
        if (folder / "adapter_model.bin").exists():
            raise InvalidAdapter(
                "adapter_model.bin is a pickle; only safetensors is read", "weights"
            )
        raise InvalidAdapter(f"{fmt.WEIGHTS_FILE} is missing", "weights")
    config = fmt.parse_config((folder / fmt.CONFIG_FILE).read_bytes(), base.linears, max_rank)
    # Only the header is read here: the weights stay on disk until first used.
    with safe_open(weights, framework="pt") as f:
        slices = {k: f.get_slice(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
        header = {k: (tuple(s.get_shape()), s.get_dtype()) for k, s in slices.items()}
        metadata = dict(f.metadata() or {})
    fmt.check_header(header, config, base.linears)
    stat = weights.stat()
    created = metadata.get("created_at", "")
    source = metadata.get("source")
    return AdapterRecord(
        name=name,
        config=config,
        size_bytes=stat.st_size,
        created_at=int(created) if created.isdigit() and len(created) < 19 else int(stat.st_mtime),
        source=source if source in ("upload", "training") else "upload",  # type: ignore[arg-type]
        metadata=metadata,
        version=version,
    )
