"""Training datasets of vector bases: safetensors files (`inputs`, `targets`) under DATA_DIR/datasets/.

Text bases keep text pairs instead (pairs.py), through the same index.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_safetensors
from safetensors.torch import load_file, save
from torch import Tensor

from app.errors import InvalidInput, NotFound, ServiceError, shorten

log = logging.getLogger(__name__)
_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class DatasetNotFound(NotFound):
    code = "dataset_not_found"


class DatasetTooLarge(ServiceError):
    status = 413
    code = "dataset_too_large"


@dataclass(frozen=True)
class DatasetRecord:
    id: str
    rows: int
    input_dim: int | None  # None for text pairs
    output_dim: int | None
    bytes: int
    created_at: int
    filename: str | None
    format: str = "tensors"  # or "text_pairs"


def new_dataset_id() -> str:
    return "ds-" + uuid.uuid4().hex[:24]


def check_tensors(
    tensors: Mapping[str, Tensor], input_dim: int, output_dim: int, max_rows: int
) -> tuple[Tensor, Tensor]:
    """`inputs` (N, input_dim) and `targets` (N, output_dim), finite floats, 1 <= N <= max_rows."""
    extra = sorted(set(tensors) - {"inputs", "targets"})
    if extra:
        raise InvalidInput(
            f"unexpected tensors {extra}; a dataset holds `inputs` and `targets`", "file"
        )
    for key, width in (("inputs", input_dim), ("targets", output_dim)):
        t = tensors.get(key)
        if t is None:
            raise InvalidInput(f"the dataset has no `{key}` tensor", key)
        if t.dtype not in _FLOATS:
            raise InvalidInput(f"`{key}` has dtype {t.dtype}; a float type is needed", key)
        if t.ndim != 2 or t.shape[1] != width or t.shape[0] == 0:
            raise InvalidInput(
                f"`{key}` has shape {tuple(t.shape)}; the base model needs (N, {width})", key
            )
    x, y = tensors["inputs"], tensors["targets"]
    if x.shape[0] != y.shape[0]:
        raise InvalidInput(
            f"`inputs` has {x.shape[0]} rows but `targets` has {y.shape[0]}", "targets"
        )
    if x.shape[0] > max_rows:
        raise DatasetTooLarge(
            f"the dataset has {x.shape[0]} rows; the limit is {max_rows}", "inputs"
        )
    x, y = x.to(torch.float32).contiguous(), y.to(torch.float32).contiguous()
    for key, t in (("inputs", x), ("targets", y)):
        if not bool(torch.isfinite(t).all()):
            raise InvalidInput(f"`{key}` holds NaN or inf values", key)
    return x, y


class DatasetStore:
    """Checked datasets written atomically, indexed in memory, read back on demand."""

    suffix = ".safetensors"

    def __init__(self, root: Path, input_dim: int, output_dim: int, max_rows: int) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.input_dim, self.output_dim, self.max_rows = input_dim, output_dim, max_rows
        self._lock = threading.Lock()
        self._records: dict[str, DatasetRecord] = {}

    def scan(self) -> None:
        for path in sorted(self.root.glob(f"*{self.suffix}")):
            try:
                with safe_open(path, framework="pt") as f:
                    meta = f.metadata() or {}
                    x, y = f.get_slice("inputs").get_shape(), f.get_slice("targets").get_shape()
            except (SafetensorError, OSError) as exc:
                log.warning("skipping dataset file %s: %s", path.name, exc)
                continue
            if len(x) != 2 or len(y) != 2 or x[0] != y[0] or x[0] == 0:
                log.warning("skipping dataset %s: not (N, in) and (N, out) tensors", path.name)
                continue
            if x[1] != self.input_dim or y[1] != self.output_dim:
                log.warning("skipping dataset %s: widths do not fit this base model", path.name)
                continue
            created = meta.get("created_at", "0")
            record = DatasetRecord(
                path.stem, x[0], x[1], y[1], path.stat().st_size,
                int(created) if created.isascii() and created.isdigit() else 0,
                meta.get("filename") or None,
            )  # fmt: skip
            self._records[record.id] = record
        self._remove_temporaries()

    def _remove_temporaries(self) -> None:
        for tmp in self.root.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)

    def _write_atomically(self, record_id: str, data: bytes) -> None:
        tmp = self.root / f".{record_id}.tmp"
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.root / f"{record_id}{self.suffix}")

    def create_from_bytes(self, data: bytes, filename: str | None) -> DatasetRecord:
        try:
            tensors = load_safetensors(data)
        except (SafetensorError, ValueError, RuntimeError) as exc:
            raise InvalidInput(f"the file is not a valid safetensors file: {exc}", "file") from exc
        return self.create(tensors, filename)

    def create(self, tensors: Mapping[str, Tensor], filename: str | None = None) -> DatasetRecord:
        x, y = check_tensors(tensors, self.input_dim, self.output_dim, self.max_rows)
        record_id, created = new_dataset_id(), int(time.time())
        meta = {"created_at": str(created)}
        if filename:
            meta["filename"] = filename[:200]
        data = save({"inputs": x, "targets": y}, metadata=meta)
        self._write_atomically(record_id, data)
        record = DatasetRecord(
            record_id, x.shape[0], x.shape[1], y.shape[1], len(data), created, meta.get("filename")
        )
        with self._lock:
            self._records[record_id] = record
        return record

    def list(self) -> list[DatasetRecord]:
        with self._lock:
            return sorted(self._records.values(), key=lambda r: (r.created_at, r.id))

    def get(self, dataset_id: str, param: str = "id") -> DatasetRecord:
        with self._lock:
            record = self._records.get(dataset_id)
        if record is None:
            raise DatasetNotFound(f"dataset {shorten(dataset_id)!r} not found", param)
        return record

    def load(self, dataset_id: str) -> tuple[Tensor, Tensor]:
        self.get(dataset_id)
        tensors = load_file(self.root / f"{dataset_id}.safetensors")
        return tensors["inputs"], tensors["targets"]

    def delete(self, dataset_id: str) -> None:
        with self._lock:
            if self._records.pop(dataset_id, None) is None:
                raise DatasetNotFound(f"dataset {shorten(dataset_id)!r} not found", "id")
        (self.root / f"{dataset_id}{self.suffix}").unlink(missing_ok=True)
