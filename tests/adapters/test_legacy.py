"""Importing the older store layout (one folder per name): byte for byte, once, and reported."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save

from app.adapters import AdapterRegistry, BaseInfo
from app.adapters import peft_format as fmt
from app.adapters.legacy import IMPORTED, import_folder
from support.helpers import TINY_SIZES, adapter_files, linears_of, lora_tensors, peft_config

BASE = BaseInfo(linears_of(TINY_SIZES), "tiny", "f" * 64, torch.device("cpu"), torch.float32)


def files(seed: int = 0) -> dict[str, bytes]:
    targets = ("layer1", "layer2")
    config = json.dumps(peft_config(4, 8, targets)).encode()
    # As the older store wrote them: fp32, its header with created_at and source.
    weights = save(
        lora_tensors(TINY_SIZES, targets, 4, seed),
        metadata={"format": "pt", "created_at": "1700000000", "source": "training"},
    )
    return {fmt.CONFIG_FILE: config, fmt.WEIGHTS_FILE: weights}


def write(root: Path, name: str, content: dict[str, bytes]) -> Path:
    (root / name).mkdir(parents=True)
    for filename, data in content.items():
        (root / name / filename).write_bytes(data)
    return root / name


def test_folders_are_imported_byte_for_byte_and_moved_aside(tmp_path: Path) -> None:
    old = tmp_path / "adapters"
    content = {name: files(seed) for seed, name in enumerate(["a", "b"])}
    for name, c in content.items():
        write(old, name, c)
    registry = AdapterRegistry.local(tmp_path / "state", BASE, 16)
    report = import_folder(registry, old)
    assert report.imported == ["a", "b"] and not report.refused
    for name, c in content.items():
        assert registry.files(name) == c
        assert registry.get(name).source == "training"
        assert (old / IMPORTED / name / fmt.WEIGHTS_FILE).read_bytes() == c[fmt.WEIGHTS_FILE]
        assert not (old / name).exists()
    assert not import_folder(registry, old)  # nothing left to import


def test_broken_folders_stay_and_are_reported_and_others_are_left_alone(tmp_path: Path) -> None:
    old = tmp_path / "adapters"
    good = files()
    write(old, "truncated", {**good, fmt.WEIGHTS_FILE: good[fmt.WEIGHTS_FILE][:100]})
    write(old, "pickle", {fmt.CONFIG_FILE: good[fmt.CONFIG_FILE], "adapter_model.bin": b"\x80"})
    write(old, "no-weights", {fmt.CONFIG_FILE: good[fmt.CONFIG_FILE]})
    write(old, "bad name!", good)
    (old / "README.md").write_text("notes")
    (old / "data").mkdir()
    (old / "data" / "x.csv").write_text("1")
    (old / "link").symlink_to(old / "data", target_is_directory=True)
    registry = AdapterRegistry.local(tmp_path / "state", BASE, 16)
    report = import_folder(registry, old)
    assert report.imported == []
    assert sorted(report.refused) == ["bad name!", "no-weights", "pickle", "truncated"]
    assert "safetensors" in report.refused["pickle"]
    assert registry.list() == []
    for entry in ("truncated", "pickle", "no-weights", "bad name!", "README.md", "data", "link"):
        assert os.path.lexists(old / entry)


def test_a_name_already_serving_other_files_is_refused_and_the_same_files_are_unchanged(
    tmp_path: Path,
) -> None:
    registry = AdapterRegistry.local(tmp_path / "state", BASE, 16)
    same = files(1)  # made once: safetensors orders header metadata differently on each save
    registry.import_files("same", *same.values())
    registry.upload("other", *adapter_files(peft_config(2, 4, ["layer1"]), lora_tensors(
        TINY_SIZES, ["layer1"], 2, 5)))  # fmt: skip
    old = tmp_path / "adapters"
    write(old, "same", same)
    write(old, "other", files(2))
    report = import_folder(registry, old)
    assert report.unchanged == ["same"] and list(report.refused) == ["other"]
    assert (old / "other").exists() and not (old / "same").exists()


def test_an_interrupted_replace_of_the_older_store_is_restored_first(tmp_path: Path) -> None:
    old = tmp_path / "adapters"
    content = files(3)
    write(old / ".trash" / "0123.replace", "a", content)
    registry = AdapterRegistry.local(tmp_path / "state", BASE, 16)
    assert import_folder(registry, old).imported == ["a"]
    assert registry.files("a") == content
