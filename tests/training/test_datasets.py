"""The dataset store on both databases and both stores: checked on the way in, shared."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save, save_file

from app.errors import InvalidInput
from app.state import Database, ObjectStore
from app.training.datasets import DatasetNotFound, DatasetStore, DatasetTooLarge


@pytest.fixture
def state(database_url: str, store_url: tuple[str, str | None]):
    db = Database(database_url)
    db.migrate()
    yield db, ObjectStore(*store_url)
    db.close()


def make(state, input_dim: int = 16, output_dim: int = 4, max_rows: int = 100) -> DatasetStore:
    return DatasetStore(*state, input_dim, output_dim, max_rows)


def tensors(rows: int = 3, input_dim: int = 16, output_dim: int = 4) -> dict[str, torch.Tensor]:
    return {"inputs": torch.randn(rows, input_dim), "targets": torch.randn(rows, output_dim)}


def test_another_process_finds_the_datasets(state) -> None:
    record = make(state).create(tensors(), "d.safetensors")
    other = DatasetStore(Database(state[0].url), state[1], 16, 4, 100)
    assert other.list() == [record]
    x, y = other.load(record.id)
    assert x.shape == (3, 16) and y.shape == (3, 4)
    assert state[1].keys() == [f"default/datasets/{record.id}"]


def test_another_projects_dataset_is_not_found(state) -> None:
    record = make(state).create(tensors())
    with pytest.raises(DatasetNotFound):
        make(state).get(record.id, project="other")
    assert make(state).list("other") == []


def test_older_dataset_files_are_imported_byte_for_byte_once(tmp_path: Path, state) -> None:
    old = tmp_path / "datasets"
    old.mkdir()
    good = save(tensors(), metadata={"created_at": "1700000000", "filename": "d.safetensors"})
    (old / "ds-good.safetensors").write_bytes(good)
    (old / "ds-broken.safetensors").write_bytes(b"not a safetensors file")
    save_file({"inputs": torch.randn(2, 16)}, old / "ds-half.safetensors")  # no targets
    save_file(tensors(3, 15, 4), old / "ds-narrow.safetensors")  # another base's widths
    datasets = make(state)
    assert datasets.import_folder(old) == ["ds-good"]
    record = datasets.get("ds-good")
    assert (record.rows, record.created_at, record.filename) == (3, 1700000000, "d.safetensors")
    assert datasets.read("ds-good") == good
    assert (old / ".imported" / "ds-good.safetensors").read_bytes() == good
    assert sorted(p.name for p in old.glob("*.safetensors")) == [
        "ds-broken.safetensors", "ds-half.safetensors", "ds-narrow.safetensors",
    ]  # fmt: skip
    assert datasets.import_folder(old) == []


def test_checks_on_the_way_in(state) -> None:
    datasets = make(state, max_rows=5)
    with pytest.raises(DatasetTooLarge):
        datasets.create(tensors(rows=6))
    with pytest.raises(InvalidInput):
        datasets.create(tensors(input_dim=15))
    with pytest.raises(InvalidInput):
        datasets.create_from_bytes(save(tensors())[:40], None)
    assert datasets.list() == [] and state[1].keys() == []


def test_delete_and_not_found(state) -> None:
    datasets = make(state)
    record = datasets.create(tensors())
    datasets.delete(record.id)
    assert state[1].keys() == []
    for call in (datasets.get, datasets.load, datasets.delete):
        with pytest.raises(DatasetNotFound):
            call(record.id)
