"""The registry on SQLite and PostgreSQL, a folder and S3: versions, names, caches, replicas."""

from __future__ import annotations

import hashlib
import json
import threading

import pytest
import sqlalchemy as sa
import torch
from safetensors.torch import load as load_safetensors

from app.adapters import AdapterRegistry, BaseInfo
from app.adapters.registry import StoredBytesQuota
from app.adapters.versions import VersionFiles, version_id
from app.errors import (
    AdapterBroken,
    AdapterExists,
    AdapterNotFound,
    InvalidAdapter,
    InvalidName,
    TooManyAdapters,
)
from app.state import Database, ObjectStore
from app.state.tables import DEFAULT_PROJECT, projects
from support.helpers import TINY_SIZES, adapter_files, linears_of, lora_tensors, peft_config

BASE = BaseInfo(linears_of(TINY_SIZES), "tiny", "f" * 64, torch.device("cpu"), torch.float32)


@pytest.fixture
def state(database_url: str, store_url: tuple[str, str | None]) -> tuple[Database, ObjectStore]:
    db = Database(database_url)
    db.migrate()
    yield db, ObjectStore(*store_url)
    db.close()


def replica(state, cache_bytes: int = 1 << 20, ttl_ms: float = 0.0, **kw) -> AdapterRegistry:
    """One process's registry over the shared state (a test may make several)."""
    db, objects = state
    return AdapterRegistry(db, objects, BASE, 16, cache_bytes, ttl_ms=ttl_ms, **kw)


@pytest.fixture
def registry(state) -> AdapterRegistry:
    return replica(state)


def files(r: int = 4, seed: int = 0, targets=("layer1", "layer2")) -> tuple[bytes, bytes]:
    return adapter_files(peft_config(r, 8, targets), lora_tensors(TINY_SIZES, targets, r, seed))


def test_an_upload_is_stored_under_its_version_id_never_its_name(registry, state) -> None:
    record = registry.upload("a", *files())
    stored = VersionFiles.read(state[1], DEFAULT_PROJECT, record.version)
    assert record.version == version_id(*stored.values())
    assert state[1].keys() == sorted(
        f"{DEFAULT_PROJECT}/{record.version}/{f}" for f in VersionFiles.NAMES
    )
    config = json.loads(stored["adapter_config.json"])
    assert config["target_modules"] == ["layer1", "layer2"] and config["peft_type"] == "LORA"
    assert record.sha256 == hashlib.sha256(stored["adapter_model.safetensors"]).hexdigest()
    assert record.metadata["source"] == "upload" and record.metadata["base_fingerprint"] == "f" * 64


def test_the_same_files_make_the_same_version_stored_once(registry, state) -> None:
    a = registry.upload("a", *files(seed=1))
    b = registry.upload("b", *files(seed=1))
    assert a.version == b.version
    assert len(state[1].keys()) == 2
    registry.delete("a")
    assert registry.load(b.version)[0].name == "b"  # b's version is still stored
    assert len(state[1].keys()) == 2


def test_a_second_upload_conflicts_unless_overwrite_and_history_keeps_both(registry) -> None:
    first = registry.upload("a", *files(seed=1))
    with pytest.raises(AdapterExists) as info:
        registry.upload("a", *files(seed=2))
    assert info.value.param == "name"
    second = registry.upload("a", *files(seed=2), overwrite=True)
    assert second.version != first.version
    assert registry.get("a").version == second.version
    assert [r.version for r, _ in registry.history("a")] == [second.version, first.version]


def test_a_pinned_version_resolves_by_full_id_or_a_prefix_of_the_names_own_history(
    registry,
) -> None:
    first = registry.upload("a", *files(seed=1))
    registry.upload("a", *files(seed=2), overwrite=True)
    other = registry.upload("b", *files(seed=3))
    assert registry.resolve(f"a@{first.version}").version == first.version
    assert registry.resolve(f"a@{first.version[:12]}").version == first.version
    with pytest.raises(AdapterNotFound):
        registry.resolve(f"a@{other.version}")  # b's version is not a's
    for bad in ("a@", "a@xyz", f"a@{first.version[:11]}", "a@b@c"):
        with pytest.raises(InvalidName):
            registry.resolve(bad)


def test_delete_removes_the_name_its_history_and_unused_files(registry, state) -> None:
    record = registry.upload("a", *files(seed=1))
    registry.upload("a", *files(seed=2), overwrite=True)
    registry.load(record.version)
    registry.delete("a")
    assert state[1].keys() == []
    for call in (lambda: registry.get("a"), lambda: registry.history("a")):
        with pytest.raises(AdapterNotFound):
            call()
    with pytest.raises(AdapterNotFound):
        registry.load(record.version)  # a request resolved before the delete
    with pytest.raises(AdapterNotFound):
        registry.delete("a")
    assert registry.count() == 0


def test_invalid_uploads_change_nothing(registry, state) -> None:
    config, weights = files()
    for bad in (
        (config, weights[:50]),
        (b'{"r": "4"}', weights),
        (config, b"\x80\x04pickle"),
        (json.dumps(peft_config(2, 8, ["layer1", "layer2"])).encode(), weights),
    ):
        with pytest.raises(InvalidAdapter):
            registry.upload("a", *bad)
    assert registry.list() == [] and state[1].keys() == []


def test_weights_stay_in_the_store_until_first_use_and_are_cached_by_version(registry) -> None:
    record = registry.upload("a", *files())
    assert registry.resident_count == 0 and not registry.is_resident(record)
    _, adapter = registry.load(record.version)
    assert registry.is_resident(record) and registry.cache_misses == 1
    assert registry.load(record.version)[1] is adapter and registry.cache_hits == 1
    assert adapter.modules["layer1"].lora_A.dtype == torch.float32


def test_cache_evicts_least_recently_used_within_its_budget(state) -> None:
    registry = replica(state)
    a = registry.upload("a", *files(seed=1))
    size = registry.load(a.version)[1].nbytes
    small = replica(state, cache_bytes=2 * size)
    versions = [small.resolve(n).version for n in "a"] + [
        small.upload(n, *files(seed=ord(n))).version for n in "bc"
    ]
    for version in versions:
        small.load(version)
    assert small.resident_count == 2 and small.cached_bytes == 2 * size
    assert not small.is_resident(small.resolve("a"))
    too_big = replica(state, cache_bytes=size - 1)
    too_big.load(a.version)
    assert too_big.resident_count == 0 and too_big.cached_bytes == 0


def test_objects_broken_in_the_store_make_the_version_broken(registry, state) -> None:
    record = registry.upload("a", *files())
    key = VersionFiles.key(DEFAULT_PROJECT, record.version, "adapter_model.safetensors")
    state[1].delete(key)
    state[1].create(key, b"garbage")
    with pytest.raises(AdapterBroken) as info:
        registry.load(record.version)
    assert info.value.param == "adapter"
    assert registry.get("a").status == "broken"
    registry.upload("a", *files(seed=5), overwrite=True)  # an admin replaces it
    assert registry.get("a").status == "ready"


def test_another_replica_sees_writes_within_its_ttl(state, monkeypatch) -> None:
    writer, reader = replica(state), replica(state, ttl_ms=1000)
    first = writer.upload("a", *files(seed=1))
    assert reader.resolve("a").version == first.version
    second = writer.upload("a", *files(seed=2), overwrite=True)
    clock = [0.0]
    monkeypatch.setattr("app.adapters.registry.time.monotonic", lambda: clock[0])
    reader._names.clear()
    assert reader.resolve("a").version == second.version
    writer.delete("a")
    assert reader.resolve("a").version == second.version  # cached: at most ttl_ms old
    clock[0] += 1.001
    with pytest.raises(AdapterNotFound):
        reader.resolve("a")


def test_overwrites_racing_from_two_replicas_leave_one_whole_version(state) -> None:
    replicas = [replica(state), replica(state)]
    replicas[0].upload("a", *files(seed=0))
    candidates = {seed: files(seed=seed) for seed in range(1, 9)}
    errors: list[BaseException] = []

    def overwrite(registry: AdapterRegistry, seeds: list[int]) -> None:
        try:
            for seed in seeds:
                registry.upload("a", *candidates[seed], overwrite=True)
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=overwrite, args=(replicas[i], list(range(1 + i, 9, 2))))
        for i in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    record = replicas[1].get("a")
    stored = replicas[1].files("a")
    assert version_id(*stored.values()) == record.version
    assert len(replicas[1].history("a")) == 9
    tensors = load_safetensors(stored["adapter_model.safetensors"])
    uploaded = {seed: load_safetensors(w) for seed, (_, w) in candidates.items()}
    assert any(
        all(torch.equal(tensors[k], t[k]) for k in t) for t in uploaded.values()
    )  # one upload's weights, whole


def test_max_adapters_refuses_a_new_name_but_not_an_overwrite(state) -> None:
    registry = replica(state, max_adapters=1)
    registry.upload("a", *files())
    with pytest.raises(TooManyAdapters):
        registry.upload("b", *files(seed=1))
    with pytest.raises(TooManyAdapters):
        registry.check_room("b")
    registry.upload("a", *files(seed=2), overwrite=True)


def test_a_projects_stored_bytes_quota_refuses_a_new_version(registry, state) -> None:
    record = registry.upload("a", *files(seed=1))
    with state[0].write() as conn:
        conn.execute(
            projects.update()
            .where(projects.c.id == DEFAULT_PROJECT)
            .values(max_stored_bytes=record.stored_bytes + 10)
        )
    with pytest.raises(StoredBytesQuota) as info:
        registry.upload("b", *files(seed=2))
    assert info.value.status == 413 and info.value.code == "storage_quota_exceeded"
    registry.upload("c", *files(seed=1))  # the same version again takes no more room
    with state[0].read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(projects)).scalar() == 1


def test_concurrent_uploads_deletes_and_loads_of_one_name_stay_consistent(registry) -> None:
    versions = {registry.upload("a", *files(seed=s), overwrite=True).version for s in (1, 2)}
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        seed = 3
        while not stop.is_set():
            try:
                versions.add(registry.upload("a", *files(seed=seed % 4), overwrite=True).version)
                if seed % 3 == 0:
                    registry.delete("a")
            except AdapterNotFound:
                pass
            except BaseException as exc:
                errors.append(exc)
            seed += 1

    def read() -> None:
        while not stop.is_set():
            try:
                record = registry.resolve("a")
                got, _ = registry.load(record.version)
                assert got.version == record.version
            except AdapterNotFound:
                pass
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=churn), threading.Thread(target=read)]
    for t in threads:
        t.start()
    threading.Event().wait(1.5)
    stop.set()
    for t in threads:
        t.join()
    assert errors == []


def test_a_version_shared_by_two_projects_survives_one_of_them_deleting_it(state) -> None:
    db, _ = state
    with db.write() as conn:
        conn.execute(projects.insert().values(id="b", name="b", created_at=0))
    writer, reader = replica(state), replica(state, ttl_ms=60_000)
    content = files(seed=9)
    mine = writer.upload("a", *content)
    theirs = writer.upload("a", *content, project="b")
    assert mine.version == theirs.version
    assert reader.resolve("a").project == DEFAULT_PROJECT  # the reader's records say "default"
    writer.delete("a")  # the default project's copy of the files is gone
    _, adapter = reader.load(mine.version)  # read from project b's copy instead
    assert adapter.modules["layer1"].lora_A.shape == (4, 16)
    assert writer.get("a", project="b").status == "ready"
    with pytest.raises(AdapterNotFound):
        writer.get("a")
