"""The dataset store: checked on the way in, and on the way back in after a restart."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save, save_file

from app.errors import InvalidInput
from app.training.datasets import DatasetNotFound, DatasetStore, DatasetTooLarge


def store(root: Path, input_dim: int = 16, output_dim: int = 4, max_rows: int = 100):
    return DatasetStore(root, input_dim, output_dim, max_rows)


def tensors(rows: int = 3, input_dim: int = 16, output_dim: int = 4) -> dict[str, torch.Tensor]:
    return {"inputs": torch.randn(rows, input_dim), "targets": torch.randn(rows, output_dim)}


def test_a_restart_finds_the_datasets_again(tmp_path: Path) -> None:
    first = store(tmp_path)
    record = first.create(tensors(), "d.safetensors")
    again = store(tmp_path)
    again.scan()
    assert again.list() == [record]
    x, y = again.load(record.id)
    assert x.shape == (3, 16) and y.shape == (3, 4)


@pytest.mark.parametrize(("input_dim", "output_dim"), [(15, 4), (16, 5), (17, 3)])
def test_scan_skips_files_of_the_wrong_width(
    tmp_path: Path, input_dim: int, output_dim: int
) -> None:
    """After the base model changes, datasets made for the old widths are not offered."""
    store(tmp_path, input_dim, output_dim).create(tensors(3, input_dim, output_dim))
    kept = store(tmp_path).create(tensors())
    again = store(tmp_path)
    again.scan()
    assert [r.id for r in again.list()] == [kept.id]


def test_scan_skips_unreadable_files_and_removes_leftover_temp_files(tmp_path: Path) -> None:
    (tmp_path / "ds-broken.safetensors").write_bytes(b"not a safetensors file")
    save_file({"inputs": torch.randn(2, 16)}, tmp_path / "ds-half.safetensors")  # no targets
    flat = {"inputs": torch.randn(16), "targets": torch.randn(4)}  # 1-D: no rows
    save_file(flat, tmp_path / "ds-flat.safetensors")
    uneven = {"inputs": torch.randn(3, 16), "targets": torch.randn(2, 4)}
    save_file(uneven, tmp_path / "ds-uneven.safetensors", metadata={"created_at": "x"})
    (tmp_path / ".ds-crashed.tmp").write_bytes(b"half written")
    kept = store(tmp_path).create(tensors())
    again = store(tmp_path)
    again.scan()
    assert [r.id for r in again.list()] == [kept.id]
    assert not (tmp_path / ".ds-crashed.tmp").exists()


def test_checks_on_the_way_in(tmp_path: Path) -> None:
    datasets = store(tmp_path, max_rows=5)
    with pytest.raises(DatasetTooLarge):
        datasets.create(tensors(rows=6))
    with pytest.raises(InvalidInput):
        datasets.create(tensors(input_dim=15))
    with pytest.raises(InvalidInput):
        datasets.create_from_bytes(save(tensors())[:40], None)
    assert datasets.list() == [] and list(tmp_path.iterdir()) == []


def test_delete_and_not_found(tmp_path: Path) -> None:
    datasets = store(tmp_path)
    record = datasets.create(tensors())
    datasets.delete(record.id)
    assert not (tmp_path / f"{record.id}.safetensors").exists()
    for call in (datasets.get, datasets.load, datasets.delete):
        with pytest.raises(DatasetNotFound):
            call(record.id)
