"""Text-pair datasets: JSONL or a JSON array of {anchor, positive}, checked on the way in, found
again after a restart, and every malformed file refused without leaving anything behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.errors import InvalidInput, MalformedBody
from app.families.encoder.datasets import MAX_TEXT_CHARS, PairDatasetStore, parse_pairs
from app.state import Database, ObjectStore
from app.training.datasets import DatasetNotFound, DatasetTooLarge

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


@pytest.fixture
def store(tmp_path: Path) -> PairDatasetStore:
    db = Database(f"sqlite:///{tmp_path / 'state.db'}")
    db.migrate()
    return PairDatasetStore(db, ObjectStore(f"file://{tmp_path / 'store'}"), 10)


def test_pairs_are_stored_and_read_back(store: PairDatasetStore) -> None:
    record = store.create_from_bytes(jsonl(rows()), "jargon.jsonl")
    assert (record.rows, record.format, record.input_dim, record.filename) == (
        3, "text_pairs", None, "jargon.jsonl",
    )  # fmt: skip
    assert record.bytes == len(store.read(record.id))
    assert store.list() == [record]
    assert store.load_pairs(record.id) == PAIRS


def test_a_bad_file_leaves_nothing_behind(store: PairDatasetStore) -> None:
    with pytest.raises(InvalidInput):
        store.create_from_bytes(jsonl(rows()[:1]), "one.jsonl")
    assert store.objects.keys() == [] and store.list() == []


def test_older_pair_files_are_imported_and_unreadable_ones_left(
    store: PairDatasetStore, tmp_path: Path
) -> None:
    old = tmp_path / "datasets"
    old.mkdir()
    first = PairDatasetStore(store.db, ObjectStore(f"file://{tmp_path / 'elsewhere'}"), 10)
    data = first.read(first.create_pairs(PAIRS).id)
    (old / "ds-old.jsonl").write_bytes(data)
    (old / "ds-broken.jsonl").write_text("not json\n")
    (old / "ds-noheader.jsonl").write_bytes(jsonl(rows()))
    store.db.close()
    fresh = tmp_path / "fresh.db"
    again = PairDatasetStore(Database(f"sqlite:///{fresh}"), store.objects, 10)
    again.db.migrate()
    assert again.import_folder(old) == ["ds-old"]
    assert again.load_pairs("ds-old") == PAIRS and again.read("ds-old") == data
    assert (old / "ds-broken.jsonl").exists() and (old / "ds-noheader.jsonl").exists()


def test_delete_removes_the_file(store: PairDatasetStore) -> None:
    record = store.create_pairs(PAIRS)
    store.delete(record.id)
    assert store.objects.keys() == []
    with pytest.raises(DatasetNotFound):
        store.load_pairs(record.id)
