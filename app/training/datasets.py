"""Training datasets of vector bases: safetensors files (`inputs`, `targets`) in the shared state.

Text bases keep text pairs instead (pairs.py), through the same records.
"""

from __future__ import annotations

import builtins
import logging
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_safetensors
from safetensors.torch import save
from sqlalchemy import Connection
from torch import Tensor

from app.errors import InvalidInput, NotFound, ServiceError, shorten
from app.state import Database, ObjectStore
from app.state.tables import DEFAULT_PROJECT, datasets

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
    """Checked datasets: records in the shared database, data in the object store.

    A dataset is written once under its id (`<project>/datasets/<id>`), then its row makes it
    visible; a worker on any machine reads it back from there.
    """

    format = "tensors"
    suffix = ".safetensors"  # of the files an older DATA_DIR/datasets/ holds

    def __init__(
        self, db: Database, objects: ObjectStore, input_dim: int, output_dim: int, max_rows: int
    ) -> None:
        self.db, self.objects = db, objects
        self.input_dim, self.output_dim, self.max_rows = input_dim, output_dim, max_rows

    def create_from_bytes(
        self, data: bytes, filename: str | None, project: str = DEFAULT_PROJECT
    ) -> DatasetRecord:
        try:
            tensors = load_safetensors(data)
        except (SafetensorError, ValueError, RuntimeError) as exc:
            raise InvalidInput(f"the file is not a valid safetensors file: {exc}", "file") from exc
        return self.create(tensors, filename, project)

    def create(
        self,
        tensors: Mapping[str, Tensor],
        filename: str | None = None,
        project: str = DEFAULT_PROJECT,
    ) -> DatasetRecord:
        x, y = check_tensors(tensors, self.input_dim, self.output_dim, self.max_rows)
        record_id, created = new_dataset_id(), int(time.time())
        meta = {"created_at": str(created)}
        if filename:
            meta["filename"] = filename[:200]
        data = save({"inputs": x, "targets": y}, metadata=meta)
        record = DatasetRecord(
            record_id, x.shape[0], x.shape[1], y.shape[1], len(data), created, meta.get("filename")
        )
        return self._store(record, data, project)

    def list(self, project: str = DEFAULT_PROJECT) -> list[DatasetRecord]:
        query = (
            sa.select(datasets)
            .where(datasets.c.project_id == project, datasets.c.format == self.format)
            .order_by(datasets.c.created_at, datasets.c.id)
        )
        with self.db.read() as conn:
            return [_record(r) for r in conn.execute(query).all()]

    def get(
        self,
        dataset_id: str,
        param: str = "id",
        project: str | None = DEFAULT_PROJECT,
        within: Connection | None = None,
    ) -> DatasetRecord:
        """The record; 404 for an unknown id or another project's (None: any project's)."""
        query = sa.select(datasets).where(
            datasets.c.id == dataset_id, datasets.c.format == self.format
        )
        if project is not None:
            query = query.where(datasets.c.project_id == project)
        with self.db.read(within) as conn:
            row = conn.execute(query).first()
        if row is None:
            raise DatasetNotFound(f"dataset {shorten(dataset_id)!r} not found", param)
        return _record(row)

    def read(self, dataset_id: str) -> bytes:
        """The stored bytes of a dataset of any project (a worker runs any project's job)."""
        with self.db.read() as conn:
            project = conn.execute(
                sa.select(datasets.c.project_id).where(datasets.c.id == dataset_id)
            ).scalar()
        if project is None:
            raise DatasetNotFound(f"dataset {shorten(dataset_id)!r} not found", "id")
        return self.objects.read(_key(project, dataset_id))

    def load(self, dataset_id: str) -> tuple[Tensor, Tensor]:
        tensors = load_safetensors(self.read(dataset_id))
        return tensors["inputs"], tensors["targets"]

    def delete(
        self, dataset_id: str, project: str = DEFAULT_PROJECT, within: Connection | None = None
    ) -> None:
        with self.db.write(within) as conn:
            gone = conn.execute(
                datasets.delete().where(
                    datasets.c.id == dataset_id, datasets.c.project_id == project
                )
            ).rowcount
            if not gone:
                raise DatasetNotFound(f"dataset {shorten(dataset_id)!r} not found", "id")
            self.objects.delete(_key(project, dataset_id))

    def import_folder(self, root: Path, project: str = DEFAULT_PROJECT) -> builtins.list[str]:
        """Register the files an older DATA_DIR/datasets/ holds, under their ids, byte for byte;
        each is moved to `.imported/` after. Returns the ids imported."""
        done = []
        for path in sorted(root.glob(f"*{self.suffix}")) if root.is_dir() else []:
            record = self._read_old(path)
            if record is None:
                continue
            with self.db.read() as conn:
                known = conn.execute(
                    sa.select(datasets.c.id).where(datasets.c.id == record.id)
                ).first()
            if known is None:
                self._store(record, path.read_bytes(), project)
                done.append(record.id)
            (root / ".imported").mkdir(exist_ok=True)
            os.replace(path, root / ".imported" / path.name)
        if done:
            log.info("imported %d datasets from %s", len(done), root)
        return done

    def _read_old(self, path: Path) -> DatasetRecord | None:
        """A record from an older dataset file; None (and a warning) if it does not fit."""
        try:
            with safe_open(path, framework="pt") as f:
                meta = f.metadata() or {}
                x, y = f.get_slice("inputs").get_shape(), f.get_slice("targets").get_shape()
        except (SafetensorError, OSError) as exc:
            log.warning("not importing dataset file %s: %s", path.name, exc)
            return None
        if len(x) != 2 or len(y) != 2 or x[0] != y[0] or x[0] == 0:
            log.warning("not importing dataset %s: not (N, in) and (N, out) tensors", path.name)
            return None
        if x[1] != self.input_dim or y[1] != self.output_dim:
            log.warning("not importing dataset %s: widths do not fit this base model", path.name)
            return None
        created = meta.get("created_at", "0")
        return DatasetRecord(
            path.stem, x[0], x[1], y[1], path.stat().st_size,
            int(created) if created.isascii() and created.isdigit() else 0,
            meta.get("filename") or None,
        )  # fmt: skip

    def _store(self, record: DatasetRecord, data: bytes, project: str) -> DatasetRecord:
        self.objects.create(_key(project, record.id), data)
        with self.db.write() as conn:
            conn.execute(
                datasets.insert().values(
                    id=record.id,
                    project_id=project,
                    format=record.format,
                    rows=record.rows,
                    input_dim=record.input_dim,
                    output_dim=record.output_dim,
                    bytes=record.bytes,
                    created_at=record.created_at,
                    filename=record.filename,
                )
            )
        return record


def _key(project: str, dataset_id: str) -> str:
    return f"{project}/datasets/{dataset_id}"


def _record(row: sa.Row) -> DatasetRecord:
    return DatasetRecord(
        row.id, row.rows, row.input_dim, row.output_dim, row.bytes, row.created_at,
        row.filename, row.format,
    )  # fmt: skip
