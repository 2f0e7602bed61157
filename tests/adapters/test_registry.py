"""The registry: scan, lazy loading, cache, overwrite, delete, and safety under threads."""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path

import pytest
import torch

from app.adapters import AdapterRegistry, AdapterStore, BaseInfo
from app.errors import AdapterExists, AdapterNotFound, InvalidAdapter
from tests.helpers import TINY_SIZES, adapter_files, linears_of, lora_tensors, peft_config

BASE = BaseInfo(linears_of(TINY_SIZES), "tiny", "f" * 64, torch.device("cpu"), torch.float32)


def make_registry(root: Path, cache_bytes: int = 1 << 20) -> AdapterRegistry:
    registry = AdapterRegistry(AdapterStore(root), BASE, max_rank=16, cache_bytes=cache_bytes)
    registry.scan()
    return registry


def files(r: int = 4, seed: int = 0, targets=("layer1", "layer2")) -> tuple[bytes, bytes]:
    return adapter_files(peft_config(r, 8, targets), lora_tensors(TINY_SIZES, targets, r, seed))


def test_upload_writes_the_peft_layout_with_our_metadata(tmp_path: Path) -> None:
    registry = make_registry(tmp_path)
    record = registry.upload("a", *files())
    folder = tmp_path / "a"
    assert sorted(p.name for p in folder.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["target_modules"] == ["layer1", "layer2"] and config["peft_type"] == "LORA"
    assert record.metadata["source"] == "upload" and record.metadata["base_fingerprint"] == "f" * 64
    assert len(registry.sha256(record)) == 64


def test_a_second_upload_conflicts_unless_overwrite(tmp_path: Path) -> None:
    registry = make_registry(tmp_path)
    first = registry.upload("a", *files(seed=1))
    with pytest.raises(AdapterExists):
        registry.upload("a", *files(seed=2))
    second = registry.upload("a", *files(seed=2), overwrite=True)
    assert second.version != first.version and second.sha256 != first.sha256


def test_scan_indexes_good_folders_and_skips_broken_ones(tmp_path: Path) -> None:
    registry = make_registry(tmp_path)
    registry.upload("good", *files())
    (tmp_path / "truncated").mkdir()
    (tmp_path / "truncated" / "adapter_config.json").write_bytes(files()[0])
    (tmp_path / "truncated" / "adapter_model.safetensors").write_bytes(files()[1][:100])
    (tmp_path / "pickle").mkdir()
    (tmp_path / "pickle" / "adapter_config.json").write_bytes(files()[0])
    (tmp_path / "pickle" / "adapter_model.bin").write_bytes(b"\x80\x04junk")
    (tmp_path / "bad name!").mkdir()
    (tmp_path / "stray-file").write_text("x")
    fresh = AdapterRegistry(AdapterStore(tmp_path), BASE, 16, 1 << 20)
    skipped = fresh.scan()
    assert [r.name for r in fresh.list()] == ["good"]
    assert set(skipped) == {"truncated", "pickle", "bad name!", "stray-file"}
    assert "pickle" in skipped["pickle"]


def test_weights_stay_on_disk_until_first_use(tmp_path: Path) -> None:
    make_registry(tmp_path).upload("a", *files())
    registry = make_registry(tmp_path)
    record = registry.get("a")
    assert not registry.is_resident(record)
    loaded_record, adapter = registry.load("a")
    assert loaded_record is record and registry.is_resident(record)
    expected = lora_tensors(TINY_SIZES, ["layer1", "layer2"], 4, 0)
    assert torch.equal(
        adapter.modules["layer1"].lora_A, expected["base_model.model.layer1.lora_A.weight"]
    )


def test_cache_evicts_least_recently_used_within_its_budget(tmp_path: Path) -> None:
    one_adapter = (4 * 16 + 8 * 4 + 4 * 8 + 4 * 4) * 4
    registry = make_registry(tmp_path, cache_bytes=2 * one_adapter)
    for name in "abc":
        registry.upload(name, *files())
    registry.load("a")
    registry.load("b")
    registry.load("a")
    registry.load("c")  # evicts b, the least recently used
    resident = [n for n in "abc" if registry.is_resident(registry.get(n))]
    assert resident == ["a", "c"]


def test_delete_then_load_is_not_found(tmp_path: Path) -> None:
    registry = make_registry(tmp_path)
    registry.upload("a", *files())
    registry.load("a")
    registry.delete("a")
    with pytest.raises(AdapterNotFound):
        registry.load("a")
    with pytest.raises(AdapterNotFound):
        registry.delete("a")
    assert not (tmp_path / "a").exists()


def test_invalid_upload_changes_nothing(tmp_path: Path) -> None:
    registry = make_registry(tmp_path)
    registry.upload("a", *files())
    before = sorted(
        (p.relative_to(tmp_path), p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file()
    )
    config, weights = files(seed=5)
    with pytest.raises(InvalidAdapter):
        registry.upload("a", config, weights[:-10], overwrite=True)
    after = sorted(
        (p.relative_to(tmp_path), p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file()
    )
    assert after == before


def test_concurrent_upload_delete_and_load_on_one_name_stay_consistent(tmp_path: Path) -> None:
    registry = make_registry(tmp_path)
    variants = {seed: files(seed=seed) for seed in (1, 2)}
    expected_a = {
        seed: lora_tensors(TINY_SIZES, ["layer1", "layer2"], 4, seed)[
            "base_model.model.layer1.lora_A.weight"
        ]
        for seed in variants
    }
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            try:
                if rng.random() < 0.3:
                    registry.delete("x")
                else:
                    registry.upload("x", *variants[seed], overwrite=True)
            except AdapterNotFound:
                pass
            except BaseException as exc:
                errors.append(exc)

    def reader() -> None:
        while not stop.is_set():
            try:
                _, adapter = registry.load("x")
            except AdapterNotFound:
                continue
            except BaseException as exc:
                errors.append(exc)
                continue
            a = adapter.modules["layer1"].lora_A
            if not any(torch.equal(a, e) for e in expected_a.values()):
                errors.append(AssertionError("loaded weights match neither upload"))

    threads = [threading.Thread(target=writer, args=(s,)) for s in variants]
    threads += [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    threading.Event().wait(1.5)
    stop.set()
    for t in threads:
        t.join()
    assert errors == []
    assert list((tmp_path / ".staging").iterdir()) == []
    fresh = make_registry(tmp_path)
    assert [r.name for r in fresh.list()] in (["x"], [])
