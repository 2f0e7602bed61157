"""Text-pair datasets for text bases: rows `{"anchor": str, "positive": str}`, JSONL or JSON."""

from __future__ import annotations

from typing import Any

from app.errors import InvalidInput, shorten
from app.state.tables import DEFAULT_PROJECT
from app.training.datasets import DatasetRecord, DatasetTooLarge
from app.training.jsonl import JsonlDatasetStore, Row, parse_rows

Pair = tuple[str, str]
MAX_TEXT_CHARS = 20_000  # far past any model's max_seq_length; longer is a mistake, not a text


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
    return check_pairs(parse_rows(data), max_rows)


class PairDatasetStore(JsonlDatasetStore):
    """The dataset store of a text base: JSONL files of pairs."""

    format = "text_pairs"
    header = "loraserve_text_pairs"

    def check(self, rows: list[Any]) -> list[Row]:
        return [{"anchor": a, "positive": p} for a, p in check_pairs(rows, self.max_rows)]

    def create_pairs(
        self, pairs: list[Pair], filename: str | None = None, project: str = DEFAULT_PROJECT
    ) -> DatasetRecord:
        return self.create_rows([{"anchor": a, "positive": p} for a, p in pairs], filename, project)

    def load_pairs(self, dataset_id: str) -> list[Pair]:
        return [(row["anchor"], row["positive"]) for row in self.load_rows(dataset_id)]
