"""Text-pair datasets for text bases: rows `{"anchor": str, "positive": str}`, JSONL or JSON.

Stored as JSONL in the object store, with a first line that describes the file (the format
older DATA_DIR/datasets/ folders hold, so those import byte for byte).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import orjson

from app.errors import InvalidInput, MalformedBody, shorten
from app.state import Database, ObjectStore
from app.state.tables import DEFAULT_PROJECT
from app.training.datasets import DatasetRecord, DatasetStore, DatasetTooLarge, new_dataset_id

log = logging.getLogger(__name__)

Pair = tuple[str, str]
MAX_TEXT_CHARS = 20_000  # far past any model's max_seq_length; longer is a mistake, not a text
_HEADER = "loraserve_text_pairs"


def _parse(data: bytes) -> list[Any]:
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


def check_pairs(rows: list[Any], max_rows: int) -> list[Pair]:
    """Each row exactly {anchor, positive}, both non-blank strings; 2 <= N <= max_rows."""
    if len(rows) > max_rows:
        raise DatasetTooLarge(f"the dataset has {len(rows)} rows; the limit is {max_rows}", "file")
    pairs: list[Pair] = []
    for i, row in enumerate(rows):
        where = f"row {i}"
        if not isinstance(row, dict):
            raise InvalidInput(f'{where} is not an object {{"anchor", "positive"}}', "file")
        keys = set(row)
        if keys != {"anchor", "positive"}:
            missing, extra = (
                sorted({"anchor", "positive"} - keys),
                sorted(keys - {"anchor", "positive"}),
            )
            why = " and ".join(
                ([f"lacks {missing}"] if missing else [])
                + ([f"has unknown keys {shorten(extra)}"] if extra else [])
            )
            raise InvalidInput(f'{where} {why}; each row is {{"anchor", "positive"}}', "file")
        for key in ("anchor", "positive"):
            value = row[key]
            if not isinstance(value, str) or not value.strip():
                raise InvalidInput(f"{where}: `{key}` must be a non-blank string", "file")
            if len(value) > MAX_TEXT_CHARS:
                raise InvalidInput(
                    f"{where}: `{key}` is {len(value)} characters; the limit is {MAX_TEXT_CHARS}",
                    "file",
                )
        pairs.append((row["anchor"], row["positive"]))
    if len(pairs) < 2:
        # In-batch negatives: a lone pair has nothing to be told apart from.
        raise InvalidInput(f"the dataset has {len(pairs)} pairs; at least 2 are needed", "file")
    return pairs


def parse_pairs(data: bytes, max_rows: int) -> list[Pair]:
    return check_pairs(_parse(data), max_rows)


class PairDatasetStore(DatasetStore):
    """The dataset store of a text base: the same records and deletes, JSONL files of pairs."""

    format = "text_pairs"
    suffix = ".jsonl"

    def __init__(self, db: Database, objects: ObjectStore, max_rows: int) -> None:
        super().__init__(db, objects, 0, 0, max_rows)

    def create_from_bytes(
        self, data: bytes, filename: str | None, project: str = DEFAULT_PROJECT
    ) -> DatasetRecord:
        return self._write(parse_pairs(data, self.max_rows), filename, project)

    def create_pairs(
        self, pairs: list[Pair], filename: str | None = None, project: str = DEFAULT_PROJECT
    ) -> DatasetRecord:
        rows = [{"anchor": a, "positive": p} for a, p in pairs]
        return self._write(check_pairs(rows, self.max_rows), filename, project)

    def _write(self, pairs: list[Pair], filename: str | None, project: str) -> DatasetRecord:
        """Checked pairs as JSONL, its first line a header that describes the file."""
        record_id, created = new_dataset_id(), int(time.time())
        header: dict[str, Any] = {"rows": len(pairs), "created_at": created}
        if filename:
            header["filename"] = filename[:200]
        lines = [orjson.dumps({_HEADER: header})]
        lines += [orjson.dumps({"anchor": a, "positive": p}) for a, p in pairs]
        data = b"\n".join(lines) + b"\n"
        record = DatasetRecord(
            record_id, len(pairs), None, None, len(data), created, header.get("filename"),
            "text_pairs",
        )  # fmt: skip
        return self._store(record, data, project)

    def _read_old(self, path: Path) -> DatasetRecord | None:
        try:
            with path.open("rb") as f:
                header = orjson.loads(f.readline()).get(_HEADER)
            return DatasetRecord(
                path.stem, int(header["rows"]), None, None, path.stat().st_size,
                int(header["created_at"]), header.get("filename"), "text_pairs",
            )  # fmt: skip
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("not importing dataset file %s: %s", path.name, exc)
            return None

    def load_pairs(self, dataset_id: str) -> list[Pair]:
        lines = self.read(dataset_id).splitlines()[1:]  # after the header
        return [(row["anchor"], row["positive"]) for row in map(orjson.loads, lines) if row]
