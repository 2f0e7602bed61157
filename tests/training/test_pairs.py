"""Text-pair datasets: JSONL or a JSON array of {anchor, positive}, checked on the way in, found
again after a restart, and every malformed file refused without leaving anything behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.errors import InvalidInput, MalformedBody
from app.training.datasets import DatasetNotFound, DatasetTooLarge
from app.training.pairs import MAX_TEXT_CHARS, PairDatasetStore, parse_pairs

PAIRS = [("zovob zigit", "a red chair"), ("tufid zigit", "a white chair"), ("x", "y")]


def jsonl(rows: list[object]) -> bytes:
    return "\n".join(json.dumps(r) for r in rows).encode()


def rows(pairs=PAIRS) -> list[dict[str, str]]:
    return [{"anchor": a, "positive": p} for a, p in pairs]


def test_jsonl_and_a_json_array_read_the_same() -> None:
    assert parse_pairs(jsonl(rows()), 10) == PAIRS
    assert parse_pairs(json.dumps(rows()).encode(), 10) == PAIRS
    assert parse_pairs(b"\n" + jsonl(rows()) + b"\n\n", 10) == PAIRS  # blank lines are not rows


@pytest.mark.parametrize(
    ("data", "error", "words"),
    [
        (b"{not json", MalformedBody, "neither a JSON array nor JSONL"),
        (jsonl([*rows(), "text"]), InvalidInput, "row 3 is not an object"),
        (jsonl([*rows(), {"anchor": "a"}]), InvalidInput, "row 3 lacks ['positive']"),
        (jsonl([{"anchor": "a", "positive": "b", "label": 1}, *rows()]), InvalidInput,
         "row 0 has unknown keys ['label']"),
        (jsonl([{"inputs": [[1.0]], "targets": [[1.0]]}]), InvalidInput, "unknown keys"),
        (jsonl([*rows(), {"anchor": " ", "positive": "b"}]), InvalidInput,
         "row 3: `anchor` must be a non-blank string"),
        (jsonl([*rows(), {"anchor": "a", "positive": 7}]), InvalidInput, "`positive` must be"),
        (jsonl([{"anchor": "a" * (MAX_TEXT_CHARS + 1), "positive": "b"}, *rows()]), InvalidInput,
         f"the limit is {MAX_TEXT_CHARS}"),
        (jsonl(rows()[:1]), InvalidInput, "1 pairs; at least 2"),
        (b"[]", InvalidInput, "0 pairs; at least 2"),
        (jsonl(rows() * 4), DatasetTooLarge, "12 rows; the limit is 10"),
    ],
)  # fmt: skip
def test_malformed_pairs_are_refused_with_the_row(data: bytes, error: type, words: str) -> None:
    with pytest.raises(error) as refused:
        parse_pairs(data, 10)
    assert words in str(refused.value.message)


def test_a_text_of_exactly_the_limit_is_kept() -> None:
    long = "a" * MAX_TEXT_CHARS
    assert parse_pairs(jsonl(rows([(long, "b"), ("c", "d")])), 10)[0] == (long, "b")


def test_a_restart_finds_the_pairs_again(tmp_path: Path) -> None:
    store = PairDatasetStore(tmp_path, 10)
    record = store.create_from_bytes(jsonl(rows()), "jargon.jsonl")
    assert (record.rows, record.format, record.input_dim, record.filename) == (
        3, "text_pairs", None, "jargon.jsonl",
    )  # fmt: skip
    assert record.bytes == (tmp_path / f"{record.id}.jsonl").stat().st_size
    again = PairDatasetStore(tmp_path, 10)
    again.scan()
    assert again.list() == [record]
    assert again.load_pairs(record.id) == PAIRS


def test_a_bad_file_leaves_nothing_behind(tmp_path: Path) -> None:
    store = PairDatasetStore(tmp_path, 10)
    with pytest.raises(InvalidInput):
        store.create_from_bytes(jsonl(rows()[:1]), "one.jsonl")
    assert list(tmp_path.iterdir()) == [] and store.list() == []


def test_scan_skips_files_it_cannot_read_and_removes_temporaries(tmp_path: Path) -> None:
    store = PairDatasetStore(tmp_path, 10)
    kept = store.create_pairs(PAIRS)
    (tmp_path / "ds-broken.jsonl").write_text("not json\n")
    (tmp_path / "ds-noheader.jsonl").write_bytes(jsonl(rows()))
    (tmp_path / ".ds-half.tmp").write_text("half")
    again = PairDatasetStore(tmp_path, 10)
    again.scan()
    assert again.list() == [kept]
    assert not (tmp_path / ".ds-half.tmp").exists()


def test_delete_removes_the_file(tmp_path: Path) -> None:
    store = PairDatasetStore(tmp_path, 10)
    record = store.create_pairs(PAIRS)
    store.delete(record.id)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DatasetNotFound):
        store.load_pairs(record.id)
