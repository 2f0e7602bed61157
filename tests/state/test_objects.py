"""The object store on a local folder and on a real S3 API server: create-only writes."""

from __future__ import annotations

import pytest

from app.state import ObjectExists, ObjectStore


@pytest.fixture
def store(store_url: tuple[str, str | None]) -> ObjectStore:
    url, endpoint = store_url
    return ObjectStore(url, endpoint)


def test_create_then_read(store: ObjectStore) -> None:
    store.create("p/v1/adapter_config.json", b"{}")
    assert store.read("p/v1/adapter_config.json") == b"{}"


def test_create_twice_is_refused_and_keeps_the_first(store: ObjectStore) -> None:
    store.create("p/v1/w", b"first")
    with pytest.raises(ObjectExists):
        store.create("p/v1/w", b"second")
    assert store.read("p/v1/w") == b"first"


def test_read_missing_is_file_not_found(store: ObjectStore) -> None:
    with pytest.raises(FileNotFoundError):
        store.read("p/nothing")


def test_delete_then_missing_and_delete_again_is_fine(store: ObjectStore) -> None:
    store.create("p/v1/w", b"x")
    store.delete("p/v1/w")
    with pytest.raises(FileNotFoundError):
        store.read("p/v1/w")
    store.delete("p/v1/w")


def test_keys_under_a_prefix(store: ObjectStore) -> None:
    for key in ("a/1/x", "a/1/y", "b/2/x"):
        store.create(key, b".")
    assert store.keys("a") == ["a/1/x", "a/1/y"]
    assert store.keys() == ["a/1/x", "a/1/y", "b/2/x"]


def test_unknown_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="STORE_URL"):
        ObjectStore("ftp://host/x")
