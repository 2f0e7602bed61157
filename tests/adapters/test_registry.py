"""The registry: scan, lazy loading, cache, overwrite, delete, and safety under threads."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from app.adapters import AdapterProblem, AdapterRegistry, AdapterStore, BaseInfo
from app.errors import (
    AdapterBroken,
    AdapterExists,
    AdapterNotFound,
    InvalidAdapter,
    InvalidName,
    NameTaken,
    TooManyAdapters,
)
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


def _broken_folders(root: Path) -> None:
    """Adapter-shaped folders that fail validation, in every way a folder can."""
    config, weights = files()
    for name, folder_files in {
        "truncated": {"adapter_config.json": config, "adapter_model.safetensors": weights[:100]},
        "pickle": {"adapter_config.json": config, "adapter_model.bin": b"\x80\x04junk"},
        "no-weights": {"adapter_config.json": config},
        "bad-config": {"adapter_config.json": b'{"r": "4"}', "adapter_model.safetensors": weights},
        "wrong-shape": {
            "adapter_config.json": adapter_files(peft_config(2, 8, ["layer1", "layer2"]), {})[0],
            "adapter_model.safetensors": weights,
        },
    }.items():
        (root / name).mkdir(parents=True)
        for filename, data in folder_files.items():
            (root / name / filename).write_bytes(data)


BROKEN = ["bad-config", "no-weights", "pickle", "truncated", "wrong-shape"]


def test_scan_lists_broken_folders_and_ignores_foreign_entries(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = make_registry(tmp_path)
    registry.upload("good", *files())
    _broken_folders(tmp_path)
    (tmp_path / "README.md").write_text("# the adapters folder")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "good", target_is_directory=True)
    fresh = AdapterRegistry(AdapterStore(tmp_path), BASE, 16, 1 << 20)
    adapters_log = logging.getLogger("app.adapters")  # may not propagate to caplog's root
    adapters_log.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.DEBUG, "app.adapters"):
            broken = fresh.scan()
    finally:
        adapters_log.removeHandler(caplog.handler)
    assert any("README" in r.getMessage() for r in caplog.records)  # at debug level
    assert [r.name for r in fresh.list()] == sorted(["good", *BROKEN])
    assert sorted(broken) == BROKEN
    assert fresh.get("good").status == "ready" and fresh.get("good").error is None
    for name in BROKEN:
        record = fresh.get(name)
        assert record.status == "broken" and record.error is not None
        assert record.error.code == "invalid_adapter" and record.error.message
    assert "pickle" in broken["pickle"] and "use_rslora" not in broken["bad-config"]
    assert fresh.get("bad-config").error.message.startswith("r:")  # type: ignore[union-attr]
    assert fresh.get("no-weights").size_bytes is None
    foreign_logs = [
        r for r in caplog.records if any(n in r.getMessage() for n in ("README", "notes", "link"))
    ]
    assert all(r.levelno <= logging.DEBUG for r in foreign_logs), foreign_logs
    assert (tmp_path / "README.md").read_text() == "# the adapters folder"


def test_a_broken_adapter_is_refused_at_load_and_download(tmp_path: Path) -> None:
    _broken_folders(tmp_path)
    registry = make_registry(tmp_path)
    for name in BROKEN:
        with pytest.raises(AdapterBroken) as info:
            registry.load(name)
        assert info.value.param == "adapter" and name in info.value.message
        with pytest.raises(AdapterBroken):
            registry.files(name)


def test_a_broken_adapter_can_be_deleted_and_replaced(tmp_path: Path) -> None:
    _broken_folders(tmp_path)
    registry = make_registry(tmp_path)
    registry.delete("truncated")
    assert not (tmp_path / "truncated").exists()
    with pytest.raises(AdapterNotFound):
        registry.get("truncated")
    with pytest.raises(AdapterExists):
        registry.upload("pickle", *files())
    record = registry.upload("pickle", *files(), overwrite=True)
    assert record.status == "ready" and registry.get("pickle") is record
    assert sorted(p.name for p in (tmp_path / "pickle").iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    registry.load("pickle")


def test_weights_broken_after_the_scan_mark_the_adapter_broken_at_load(tmp_path: Path) -> None:
    make_registry(tmp_path).upload("a", *files())
    registry = make_registry(tmp_path)
    (tmp_path / "a" / "adapter_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(AdapterBroken):
        registry.load("a")
    assert registry.get("a").status == "broken"
    registry.delete("a")


@pytest.mark.parametrize("kind", ["file", "symlink", "empty dir", "other dir"])
def test_a_foreign_name_is_taken_for_uploads_and_training(tmp_path: Path, kind: str) -> None:
    registry = make_registry(tmp_path)
    target = tmp_path / "x"
    if kind == "file":
        target.write_text("notes")
    elif kind == "symlink":
        registry.upload("real", *files())
        target.symlink_to(tmp_path / "real", target_is_directory=True)
    else:
        target.mkdir()
        if kind == "other dir":
            (target / "data.csv").write_text("1")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    for overwrite in (False, True):
        with pytest.raises(NameTaken):
            registry.upload("x", *files(), overwrite=overwrite)
    _, adapter = registry.load("real") if kind == "symlink" else (None, None)
    with pytest.raises(NameTaken):
        registry.check_room("x")  # what the training service asks before it queues a job
    if adapter is not None:
        with pytest.raises(AdapterExists):  # NameTaken is a kind of AdapterExists (409)
            registry.add("x", adapter, source="training")
    with pytest.raises(AdapterNotFound):
        registry.delete("x")
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    assert "x" not in [r.name for r in registry.list()]


def test_uploaded_sha256_is_of_the_bytes_sent_and_sha256_of_the_stored_file(
    tmp_path: Path,
) -> None:
    registry = make_registry(tmp_path)
    config, weights = files()
    record = registry.upload("a", config, weights)
    stored = (tmp_path / "a" / "adapter_model.safetensors").read_bytes()
    assert record.uploaded_sha256 == hashlib.sha256(weights).hexdigest()
    assert registry.sha256(record) == hashlib.sha256(stored).hexdigest()
    rescanned = make_registry(tmp_path).get("a")
    assert rescanned.uploaded_sha256 == record.uploaded_sha256
    assert make_registry(tmp_path).sha256(rescanned) == registry.sha256(record)
    _, adapter = registry.load("a")
    trained = registry.add("t", adapter, source="training")
    assert trained.uploaded_sha256 is None and trained.sha256 is not None


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


def test_download_gives_the_two_stored_files(tmp_path: Path) -> None:
    registry = make_registry(tmp_path)
    registry.upload("a", *files())
    folder = tmp_path / "a"
    assert registry.files("a") == {
        "adapter_config.json": (folder / "adapter_config.json").read_bytes(),
        "adapter_model.safetensors": (folder / "adapter_model.safetensors").read_bytes(),
    }


def test_download_of_a_broken_adapter_names_the_name_field(tmp_path: Path) -> None:
    _broken_folders(tmp_path)
    registry = make_registry(tmp_path)
    with pytest.raises(AdapterBroken) as info:
        registry.files("no-weights")
    assert info.value.param == "name"
    assert info.value.message == (
        "adapter 'no-weights' is broken (adapter_model.safetensors is missing); "
        "an admin can replace it (overwrite=true) or delete it"
    )


NAN_PROBLEM = "base_model.model.layer1.lora_A.weight holds NaN or inf values"


def _nan_weights() -> bytes:
    """Weights of the right keys and shapes (so they pass the scan), with a NaN in them."""
    tensors = lora_tensors(TINY_SIZES, ["layer1", "layer2"], 4)
    tensors["base_model.model.layer1.lora_A.weight"][0, 0] = float("nan")
    return adapter_files({}, tensors)[1]


def _just_before_the_name_lock(
    registry: AdapterRegistry, monkeypatch: pytest.MonkeyPatch, meanwhile
) -> None:
    """Run `meanwhile()` once, as another request would, between a check and the name lock."""
    real = registry._name_lock
    pending = [meanwhile]

    def lock(name: str):
        while pending:
            pending.pop()()
        return real(name)

    monkeypatch.setattr(registry, "_name_lock", lock)


def test_download_racing_a_delete_is_not_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = make_registry(tmp_path)
    registry.upload("a", *files())
    _just_before_the_name_lock(registry, monkeypatch, lambda: registry.delete("a"))
    with pytest.raises(AdapterNotFound) as info:
        registry.files("a")
    assert (info.value.message, info.value.param) == ("adapter 'a' not found", "name")


def test_download_racing_a_load_that_finds_the_weights_broken_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_registry(tmp_path).upload("a", *files())
    registry = make_registry(tmp_path)
    (tmp_path / "a" / "adapter_model.safetensors").write_bytes(_nan_weights())

    def load_finds_it_broken() -> None:
        with pytest.raises(AdapterBroken):
            registry.load("a")

    _just_before_the_name_lock(registry, monkeypatch, load_finds_it_broken)
    with pytest.raises(AdapterBroken) as info:
        registry.files("a")
    assert info.value.param == "name"
    assert info.value.message == f"adapter 'a' is broken ({NAN_PROBLEM}); " + (
        "an admin can replace it (overwrite=true) or delete it"
    )


def test_weights_found_broken_at_load_give_a_broken_record_of_the_same_name_and_config(
    tmp_path: Path,
) -> None:
    make_registry(tmp_path).upload("a", *files())
    registry = make_registry(tmp_path)
    before = registry.get("a")
    (tmp_path / "a" / "adapter_model.safetensors").write_bytes(_nan_weights())
    expected = (
        f"adapter 'a' is broken ({NAN_PROBLEM}); an admin can replace it "
        "(overwrite=true) or delete it"
    )
    for _ in range(2):  # found at the first load, then known
        with pytest.raises(AdapterBroken) as info:
            registry.load("a", "model")
        assert (info.value.message, info.value.param) == (expected, "model")
    after = registry.get("a")
    assert after.name == "a" and after.config == before.config and after.config is not None
    assert isinstance(after.version, int) and after.version != before.version
    assert after.error == AdapterProblem("invalid_adapter", NAN_PROBLEM)
    assert after.size_bytes == len(_nan_weights()) and after.status == "broken"
    assert not registry.is_resident(after) and registry.resident_count == 0


def test_delete_drops_the_cached_copy(tmp_path: Path) -> None:
    registry = make_registry(tmp_path)
    registry.upload("a", *files())
    registry.load("a")
    assert registry.resident_count == 1 and registry.cached_bytes > 0
    registry.delete("a")
    assert registry.resident_count == 0 and registry.cached_bytes == 0


def test_delete_of_a_folder_removed_behind_our_back_unlists_it(tmp_path: Path) -> None:
    registry = make_registry(tmp_path)
    registry.upload("a", *files())
    shutil.rmtree(tmp_path / "a")
    with pytest.raises(AdapterNotFound) as info:
        registry.delete("a")
    assert (info.value.message, info.value.param) == ("adapter 'a' not found", "name")
    with pytest.raises(AdapterNotFound):
        registry.get("a")
    assert registry.list() == []


def test_listeners_hear_of_every_write_and_delete_by_name(tmp_path: Path) -> None:
    registry = make_registry(tmp_path)
    heard: list[str] = []
    registry.on_change(heard.append)
    registry.upload("a", *files())
    registry.upload("a", *files(seed=1), overwrite=True)
    registry.delete("a")
    assert heard == ["a", "a", "a"]


def test_an_adapter_too_big_for_the_cache_is_served_without_evicting_others(
    tmp_path: Path,
) -> None:
    one_adapter = (4 * 16 + 8 * 4 + 4 * 8 + 4 * 4) * 4  # r=4 on layer1 and layer2, fp32
    registry = make_registry(tmp_path, cache_bytes=2 * one_adapter)
    registry.upload("small", *files())
    registry.upload("big", *files(r=16))
    registry.load("small")
    _, big = registry.load("big")
    assert big.nbytes > registry.cache_bytes
    assert [n for n in ("small", "big") if registry.is_resident(registry.get(n))] == ["small"]
    assert registry.cached_bytes == one_adapter


def test_get_and_load_name_their_field_for_bad_and_unknown_names(tmp_path: Path) -> None:
    registry = make_registry(tmp_path)
    with pytest.raises(AdapterNotFound) as info:
        registry.get("missing")
    assert (info.value.message, info.value.param) == ("adapter 'missing' not found", "name")
    with pytest.raises(InvalidName) as bad:
        registry.get("../x")
    assert bad.value.param == "name"
    with pytest.raises(AdapterNotFound) as info:
        registry.load("missing")
    assert (info.value.message, info.value.param) == ("adapter 'missing' not found", "adapter")
    with pytest.raises(InvalidName) as bad:
        registry.load("../x")
    assert bad.value.param == "adapter"


def test_cache_hits_and_misses_are_counted(tmp_path: Path) -> None:
    registry = make_registry(tmp_path)
    for name in "ab":
        registry.upload(name, *files())
    _, first = registry.load("a")
    assert registry.load("a")[1] is first and registry.load("a")[1] is first
    registry.load("b")
    assert (registry.cache_hits, registry.cache_misses) == (2, 2)


def test_load_racing_a_delete_is_not_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = make_registry(tmp_path)
    registry.upload("a", *files())
    _just_before_the_name_lock(registry, monkeypatch, lambda: registry.delete("a"))
    with pytest.raises(AdapterNotFound) as info:
        registry.load("a")
    assert (info.value.message, info.value.param) == ("adapter 'a' not found", "adapter")


def test_load_racing_a_load_that_finds_the_weights_broken_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_registry(tmp_path).upload("a", *files())
    registry = make_registry(tmp_path)
    (tmp_path / "a" / "adapter_model.safetensors").write_bytes(_nan_weights())

    def load_finds_it_broken() -> None:
        with pytest.raises(AdapterBroken):
            registry.load("a")

    _just_before_the_name_lock(registry, monkeypatch, load_finds_it_broken)
    with pytest.raises(AdapterBroken) as info:
        registry.load("a")
    assert info.value.param == "adapter"
    assert info.value.message == (
        f"adapter 'a' is broken ({NAN_PROBLEM}); an admin can replace it "
        "(overwrite=true) or delete it"
    )


def test_load_racing_a_load_of_the_same_adapter_uses_its_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = make_registry(tmp_path)
    registry.upload("a", *files())
    loaded = []
    _just_before_the_name_lock(registry, monkeypatch, lambda: loaded.append(registry.load("a")))
    record, adapter = registry.load("a")
    assert loaded == [(record, adapter)] and loaded[0][1] is adapter
    assert registry.resident_count == 1 and registry.cache_misses == 2


HALF = BaseInfo(BASE.linears, "tiny", "f" * 64, torch.device("cpu"), torch.float16)


def _big_values() -> tuple[bytes, bytes]:
    """Weights whose product fits float32 but not float16: 2 * 4 * 1e3 * 1e3 > 65504."""
    tensors = lora_tensors(TINY_SIZES, ["layer1", "layer2"], 4)
    tensors["base_model.model.layer1.lora_A.weight"][0, 0] = 1e3
    tensors["base_model.model.layer1.lora_B.weight"][0, 0] = 1e3
    return adapter_files(peft_config(4, 8, ["layer1", "layer2"]), tensors)


def test_weights_must_fit_the_serving_dtype_at_upload_and_at_load(tmp_path: Path) -> None:
    half = AdapterRegistry(AdapterStore(tmp_path), HALF, max_rank=16, cache_bytes=1 << 20)
    half.scan()
    with pytest.raises(InvalidAdapter) as info:
        half.upload("a", *_big_values())
    assert info.value.param == "weights" and "beyond torch.float16" in info.value.message
    make_registry(tmp_path).upload("a", *_big_values())  # fine for a float32 base
    half = AdapterRegistry(AdapterStore(tmp_path), HALF, max_rank=16, cache_bytes=1 << 20)
    half.scan()
    with pytest.raises(AdapterBroken):
        half.load("a")
    assert half.get("a").status == "broken"


def test_load_gives_the_weights_on_the_serving_device_in_its_dtype(tmp_path: Path) -> None:
    make_registry(tmp_path).upload("a", *files())
    meta = BaseInfo(BASE.linears, "tiny", "f" * 64, torch.device("meta"), torch.float16)
    registry = AdapterRegistry(AdapterStore(tmp_path), meta, max_rank=16, cache_bytes=1 << 20)
    registry.scan()
    _, adapter = registry.load("a")
    for module in adapter.modules.values():
        for t in (module.lora_A, module.lora_B):
            assert (t.device.type, t.dtype) == ("meta", torch.float16)


def test_upload_refuses_pickles_and_non_safetensors_weights_naming_the_field(
    tmp_path: Path,
) -> None:
    registry = make_registry(tmp_path)
    config, weights = files()
    with pytest.raises(InvalidAdapter) as info:
        registry.upload("a", config, b"\x80\x04junk")
    assert (info.value.message, info.value.param) == (
        "weights look like a pickled .bin file; only safetensors is accepted",
        "weights",
    )
    with pytest.raises(InvalidAdapter) as info:
        registry.upload("a", config, weights[:-10])
    assert info.value.param == "weights"
    assert info.value.message.startswith("weights are not a valid safetensors file: ")
    assert len(info.value.message) > len("weights are not a valid safetensors file: ")


def test_a_second_upload_conflicts_naming_the_name_field(tmp_path: Path) -> None:
    registry = make_registry(tmp_path)
    registry.upload("a", *files())
    with pytest.raises(AdapterExists) as info:
        registry.upload("a", *files())
    assert (info.value.code, info.value.param) == ("adapter_exists", "name")
    assert info.value.message == "adapter 'a' already exists; pass overwrite=true"


def test_add_writes_our_header_and_config_and_does_not_overwrite_by_default(
    tmp_path: Path,
) -> None:
    registry = make_registry(tmp_path)
    _, adapter = registry.load(registry.upload("a", *files()).name)
    before = int(time.time())
    record = registry.add("t", adapter, source="training", metadata={"job": "j1"})
    after = int(time.time())
    weights = (tmp_path / "t" / "adapter_model.safetensors").read_bytes()
    assert before <= record.created_at <= after
    assert record.metadata == {
        "format": "pt",
        "created_at": str(record.created_at),
        "source": "training",
        "base_model": "tiny",
        "base_fingerprint": "f" * 64,
        "job": "j1",
    }
    with safe_open(tmp_path / "t" / "adapter_model.safetensors", framework="pt") as f:
        assert f.metadata() == record.metadata
    assert (record.name, record.source, record.size_bytes) == ("t", "training", len(weights))
    assert record.sha256 == hashlib.sha256(weights).hexdigest()
    config = json.loads((tmp_path / "t" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny"
    again = make_registry(tmp_path).get("t")  # what a restart reads back
    fields = ("name", "config", "size_bytes", "created_at", "source", "metadata", "error")
    assert [getattr(again, f) for f in fields] == [getattr(record, f) for f in fields]
    with pytest.raises(AdapterExists):
        registry.add("t", adapter, source="training")


def test_overwrite_drops_the_cached_copy(tmp_path: Path) -> None:
    registry = make_registry(tmp_path)
    registry.upload("a", *files())
    registry.load("a")
    registry.upload("a", *files(seed=1), overwrite=True)
    assert registry.resident_count == 0 and registry.cached_bytes == 0


def test_max_adapters_refuses_a_new_name_but_not_an_overwrite(tmp_path: Path) -> None:
    registry = AdapterRegistry(AdapterStore(tmp_path), BASE, 16, 1 << 20, max_adapters=2)
    registry.scan()
    registry.upload("a", *files())
    registry.upload("b", *files())
    with pytest.raises(TooManyAdapters) as info:
        registry.upload("c", *files())
    assert (info.value.message, info.value.param) == (
        "the store holds the maximum of 2 adapters; delete some first",
        "name",
    )
    with pytest.raises(TooManyAdapters):
        registry.check_room("c")
    registry.check_room("a")
    registry.upload("a", *files(seed=1), overwrite=True)
    registry.delete("b")
    registry.upload("c", *files())
    assert [r.name for r in registry.list()] == ["a", "c"]


ONE_ADAPTER = (4 * 16 + 8 * 4 + 4 * 8 + 4 * 4) * 4  # bytes of r=4 on layer1 and layer2, fp32


def test_an_adapter_exactly_the_cache_size_is_kept(tmp_path: Path) -> None:
    registry = make_registry(tmp_path, cache_bytes=ONE_ADAPTER)
    registry.upload("a", *files())
    registry.load("a")
    assert registry.is_resident(registry.get("a")) and registry.cached_bytes == ONE_ADAPTER


def test_eviction_keeps_the_byte_count_exact(tmp_path: Path) -> None:
    registry = make_registry(tmp_path, cache_bytes=2 * ONE_ADAPTER)
    for name in "abc":
        registry.upload(name, *files())
        registry.load(name)
    assert registry.resident_count == 2 and registry.cached_bytes == 2 * ONE_ADAPTER


def test_a_rescan_of_a_live_registry_keeps_the_cache_accounting_exact(tmp_path: Path) -> None:
    registry = make_registry(tmp_path)
    registry.upload("a", *files())
    registry.upload("b", *files())
    registry.load("a")
    registry.load("b")
    registry.scan()  # new records (new versions): the cached copies are stale now
    registry.load("a")
    assert registry.is_resident(registry.get("a")) and not registry.is_resident(registry.get("b"))
    (tmp_path / "b" / "adapter_model.safetensors").write_bytes(_nan_weights())
    with pytest.raises(AdapterBroken):
        registry.load("b")
    assert registry.resident_count == 1 and registry.cached_bytes == ONE_ADAPTER


def test_scan_skips_invalid_names_and_goes_on(tmp_path: Path) -> None:
    config, weights = files()
    for name in ("a b", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "adapter_config.json").write_bytes(config)
        (tmp_path / name / "adapter_model.safetensors").write_bytes(weights)
    registry = make_registry(tmp_path)
    assert [r.name for r in registry.list()] == ["b"] and registry.get("b").status == "ready"


def test_scan_gives_each_record_its_own_version(tmp_path: Path) -> None:
    writer = make_registry(tmp_path)
    for name in "ab":
        writer.upload(name, *files())
    versions = [r.version for r in make_registry(tmp_path).list()]
    assert all(isinstance(v, int) for v in versions) and len(set(versions)) == 2


def test_download_waits_for_an_overwrite_of_the_same_name_in_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = make_registry(tmp_path)
    registry.upload("a", *files(seed=1))
    committing, go = threading.Event(), threading.Event()
    real_commit = registry.store.commit

    def slow_commit(staged: Path, name: str) -> None:
        committing.set()
        go.wait(10)
        real_commit(staged, name)

    monkeypatch.setattr(registry.store, "commit", slow_commit)
    writer = threading.Thread(
        target=registry.upload, args=("a", *files(seed=2)), kwargs={"overwrite": True}
    )
    writer.start()
    assert committing.wait(10)
    downloaded: list[dict[str, bytes]] = []
    reader = threading.Thread(target=lambda: downloaded.append(registry.files("a")))
    reader.start()
    reader.join(0.3)
    blocked = reader.is_alive()  # it can only get the files once the overwrite is done
    go.set()
    writer.join(10)
    reader.join(10)
    assert blocked and downloaded == [
        {
            f: (tmp_path / "a" / f).read_bytes()
            for f in ("adapter_config.json", "adapter_model.safetensors")
        }
    ]
