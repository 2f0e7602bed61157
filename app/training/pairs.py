"""Text-pair datasets for text bases: rows `{"anchor": str, "positive": str}`, JSONL or JSON.

Stored as JSONL under DATA_DIR/datasets/ with a first line that holds the record, so a file is
its own index after a restart and is written in one atomic replace.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import orjson

from app.errors import InvalidInput, MalformedBody, shorten
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
    """The dataset store of a text base: same index and deletes, JSONL files of pairs."""

    suffix = ".jsonl"

    def __init__(self, root: Path, max_rows: int) -> None:
        super().__init__(root, 0, 0, max_rows)

    def scan(self) -> None:
        for path in sorted(self.root.glob(f"*{self.suffix}")):
            try:
                with path.open("rb") as f:
                    header = orjson.loads(f.readline()).get(_HEADER)
                record = DatasetRecord(
                    path.stem, int(header["rows"]), None, None, path.stat().st_size,
                    int(header["created_at"]), header.get("filename"), "text_pairs",
                )  # fmt: skip
            except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
                log.warning("skipping dataset file %s: %s", path.name, exc)
                continue
            self._records[record.id] = record
        self._remove_temporaries()

    def create_from_bytes(self, data: bytes, filename: str | None) -> DatasetRecord:
        return self._write(parse_pairs(data, self.max_rows), filename)

    def create_pairs(self, pairs: list[Pair], filename: str | None = None) -> DatasetRecord:
        rows = [{"anchor": a, "positive": p} for a, p in pairs]
        return self._write(check_pairs(rows, self.max_rows), filename)

    def _write(self, pairs: list[Pair], filename: str | None) -> DatasetRecord:
        """Checked pairs to disk, atomically, and into the index."""
        record_id, created = new_dataset_id(), int(time.time())
        header: dict[str, Any] = {"rows": len(pairs), "created_at": created}
        if filename:
            header["filename"] = filename[:200]
        lines = [orjson.dumps({_HEADER: header})]
        lines += [orjson.dumps({"anchor": a, "positive": p}) for a, p in pairs]
        data = b"\n".join(lines) + b"\n"
        self._write_atomically(record_id, data)
        record = DatasetRecord(
            record_id,
            len(pairs),
            None,
            None,
            len(data),
            created,
            header.get("filename"),
            "text_pairs",
        )
        with self._lock:
            self._records[record_id] = record
        return record

    def load_pairs(self, dataset_id: str) -> list[Pair]:
        self.get(dataset_id)
        with (self.root / f"{dataset_id}{self.suffix}").open("rb") as f:
            f.readline()  # the header
            return [(row["anchor"], row["positive"]) for row in map(orjson.loads, f) if row]
