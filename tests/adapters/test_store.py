"""Atomic writes and crash recovery of the adapter folders."""

from __future__ import annotations

import os
from pathlib import Path

from app.adapters.store import AdapterStore


def test_commit_publishes_and_replaces_whole_folders(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path)
    store.commit(store.stage({"f": b"one"}), "a")
    assert (tmp_path / "a" / "f").read_bytes() == b"one"
    store.commit(store.stage({"f": b"two", "g": b"x"}), "a")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["f", "g"]
    assert store.names() == ["a"]
    assert list((tmp_path / ".staging").iterdir()) == []
    assert list((tmp_path / ".trash").iterdir()) == []


def test_delete_removes_the_folder(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path)
    store.commit(store.stage({"f": b"one"}), "a")
    store.delete("a")
    assert not store.exists("a") and store.names() == []


def test_recover_restores_an_adapter_whose_replacement_was_cut_short(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path)
    store.commit(store.stage({"f": b"old"}), "a")
    # A crash between moving the old folder aside and renaming the new one in:
    store.stage({"f": b"new"})
    store._to_trash(tmp_path / "a", ".replace")
    assert not store.exists("a")
    AdapterStore(tmp_path).recover()
    assert (tmp_path / "a" / "f").read_bytes() == b"old"
    assert list((tmp_path / ".staging").iterdir()) == []


def test_recover_does_not_resurrect_a_deleted_adapter(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path)
    store.commit(store.stage({"f": b"old"}), "a")
    store._to_trash(tmp_path / "a", ".delete")  # crash before the trash was emptied
    store.recover()
    assert not store.exists("a")
    assert list((tmp_path / ".trash").iterdir()) == []


def test_recover_keeps_the_new_adapter_when_the_replace_finished(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path)
    store.commit(store.stage({"f": b"old"}), "a")
    old = store._to_trash(tmp_path / "a", ".replace")
    os.replace(store.stage({"f": b"new"}), tmp_path / "a")  # crash before the old was removed
    assert old.exists()
    store.recover()
    assert (tmp_path / "a" / "f").read_bytes() == b"new"
