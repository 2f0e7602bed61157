"""Datasets of JSON rows (text pairs, chats), stored as JSONL in the object store.

The first line of a stored file describes it (`{"<header>": {rows, created_at, filename}}`); the
rows follow, one a line, as checked. Older DATA_DIR/datasets/ folders hold the same format, so
those import byte for byte.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, ClassVar

import orjson

from app.errors import MalformedBody, shorten
from app.state import Database, ObjectStore
from app.state.tables import DEFAULT_PROJECT
from app.training.datasets import DatasetRecord, DatasetStore, new_dataset_id

log = logging.getLogger(__name__)

Row = dict[str, Any]


def parse_rows(data: bytes) -> list[Any]:
    """A JSON array of rows, or JSONL (one JSON object a line, blank lines ignored)."""
    text = data.lstrip()
    try:
        if text.startswith(b"["):
            rows = orjson.loads(text)
        else:
            rows = [orjson.loads(line) for line in text.splitlines() if line.strip()]
    except orjson.JSONDecodeError as exc:
        raise MalformedBody(
            f"the dataset is neither a JSON array nor JSONL: {shorten(str(exc), 200)}"
        ) from exc
    return rows if isinstance(rows, list) else [rows]


class JsonlDatasetStore(DatasetStore):
    """The same records and deletes as vector datasets; the data a JSONL file of checked rows."""

    suffix = ".jsonl"
    header: ClassVar[str]  # the key of the stored file's first line

    def __init__(self, db: Database, objects: ObjectStore, max_rows: int) -> None:
        super().__init__(db, objects, 0, 0, max_rows)

    def check(self, rows: list[Any]) -> list[Row]:
        """The rows as stored, or a 4xx naming the first wrong one."""
        raise NotImplementedError

    def create_from_bytes(
        self, data: bytes, filename: str | None, project: str = DEFAULT_PROJECT
    ) -> DatasetRecord:
        return self.create_rows(parse_rows(data), filename, project)

    def create_rows(
        self, rows: list[Any], filename: str | None = None, project: str = DEFAULT_PROJECT
    ) -> DatasetRecord:
        checked = self.check(rows)
        record_id, created = new_dataset_id(), int(time.time())
        header: dict[str, Any] = {"rows": len(checked), "created_at": created}
        if filename:
            header["filename"] = filename[:200]
        lines = [orjson.dumps({self.header: header}), *map(orjson.dumps, checked)]
        data = b"\n".join(lines) + b"\n"
        record = DatasetRecord(
            record_id, len(checked), None, None, len(data), created, header.get("filename"),
            self.format,
        )  # fmt: skip
        return self._store(record, data, project)

    def load_rows(self, dataset_id: str) -> list[Row]:
        lines = self.read(dataset_id).splitlines()[1:]  # after the header
        return [row for row in map(orjson.loads, lines) if row]

    def _read_old(self, path: Path) -> DatasetRecord | None:
        try:
            with path.open("rb") as f:
                header = orjson.loads(f.readline()).get(self.header)
            return DatasetRecord(
                path.stem, int(header["rows"]), None, None, path.stat().st_size,
                int(header["created_at"]), header.get("filename"), self.format,
            )  # fmt: skip
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("not importing dataset file %s: %s", path.name, exc)
            return None
