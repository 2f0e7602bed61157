"""Atomic writes and crash recovery of the adapter folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.adapters.store import AdapterStore
from app.errors import AdapterNotFound, NameTaken

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def test_commit_publishes_and_replaces_whole_folders(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path)
    store.commit(store.stage({CONFIG: b"one"}), "a")
    assert (tmp_path / "a" / CONFIG).read_bytes() == b"one"
    store.commit(store.stage({CONFIG: b"two", WEIGHTS: b"x"}), "a")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [CONFIG, WEIGHTS]
    assert store.names() == ["a"]
    assert list((tmp_path / ".staging").iterdir()) == []
    assert list((tmp_path / ".trash").iterdir()) == []


def test_delete_removes_the_folder(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path)
    store.commit(store.stage({CONFIG: b"one"}), "a")
    store.delete("a")
    assert not store.exists("a") and store.names() == []


def test_recover_restores_an_adapter_whose_replacement_was_cut_short(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path)
    store.commit(store.stage({CONFIG: b"old"}), "a")
    # A crash between moving the old folder aside and renaming the new one in:
    store.stage({CONFIG: b"new"})
    store._to_trash(tmp_path / "a", ".replace")
    assert not store.exists("a")
    AdapterStore(tmp_path).recover()
    assert (tmp_path / "a" / CONFIG).read_bytes() == b"old"
    assert list((tmp_path / ".staging").iterdir()) == []


def test_recover_does_not_resurrect_a_deleted_adapter(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path)
    store.commit(store.stage({CONFIG: b"old"}), "a")
    store._to_trash(tmp_path / "a", ".delete")  # crash before the trash was emptied
    store.recover()
    assert not store.exists("a")
    assert list((tmp_path / ".trash").iterdir()) == []


def test_recover_keeps_the_new_adapter_when_the_replace_finished(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path)
    store.commit(store.stage({CONFIG: b"old"}), "a")
    old = store._to_trash(tmp_path / "a", ".replace")
    os.replace(store.stage({CONFIG: b"new"}), tmp_path / "a")  # crash before the old was removed
    assert old.exists()
    store.recover()
    assert (tmp_path / "a" / CONFIG).read_bytes() == b"new"


def _foreign_entries(root: Path) -> list[str]:
    """One of each kind of entry the store did not make, by name."""
    root.mkdir(exist_ok=True)
    (root / "README.md").write_text("# docs\n")
    (root / "notes.txt").write_text("an operator's notes")
    (root / "empty").mkdir()
    (root / "other").mkdir()
    (root / "other" / "data.csv").write_text("1,2")
    (root / "readme-only").mkdir()
    (root / "readme-only" / "README.md").write_text("x")
    (root / "mixed").mkdir()
    (root / "mixed" / "adapter_config.json").write_text("{}")
    (root / "mixed" / "thesis.pdf").write_bytes(b"%PDF")
    (root / "real").mkdir()
    (root / "real" / "adapter_config.json").write_text("{}")
    (root / "link").symlink_to(root / "real", target_is_directory=True)
    (root / "dangling").symlink_to(root / "nowhere")
    (root / "nested-link").mkdir()
    (root / "nested-link" / "adapter_config.json").symlink_to(root / "notes.txt")
    return [
        "README.md",
        "notes.txt",
        "empty",
        "other",
        "readme-only",
        "mixed",
        "link",
        "dangling",
        "nested-link",
    ]


def _tree(root: Path) -> list[tuple[str, bool, bytes | str]]:
    """Every entry under root, links as their targets, files as their bytes."""
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out.append((str(p.relative_to(root)), True, os.readlink(p)))
        elif p.is_file():
            out.append((str(p.relative_to(root)), False, p.read_bytes()))
        else:
            out.append((str(p.relative_to(root)), False, "dir"))
    return out


def test_kind_tells_adapter_folders_from_foreign_entries(tmp_path: Path) -> None:
    foreign = _foreign_entries(tmp_path)
    store = AdapterStore(tmp_path)
    store.commit(store.stage({"adapter_config.json": b"{}", "adapter_model.safetensors": b""}), "a")
    (tmp_path / "peft").mkdir()  # as PEFT's save_pretrained writes it
    for f in ("adapter_config.json", "adapter_model.safetensors", "README.md"):
        (tmp_path / "peft" / f).write_bytes(b"x")
    assert {n: store.kind(n) for n in foreign} == dict.fromkeys(foreign, "foreign")
    assert store.kind("a") == store.kind("peft") == store.kind("real") == "adapter"
    assert store.kind("missing") == "absent"
    assert store.names() == ["a", "peft", "real"]


@pytest.mark.parametrize("index", range(9))
def test_commit_never_replaces_a_foreign_entry(tmp_path: Path, index: int) -> None:
    name = _foreign_entries(tmp_path)[index]
    store = AdapterStore(tmp_path)
    before = _tree(tmp_path)
    staged = store.stage({"adapter_config.json": b"{}"})
    with pytest.raises(NameTaken):
        store.commit(staged, name)
    store.discard(staged)
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("index", range(9))
def test_delete_never_removes_a_foreign_entry(tmp_path: Path, index: int) -> None:
    name = _foreign_entries(tmp_path)[index]
    store = AdapterStore(tmp_path)
    before = _tree(tmp_path)
    with pytest.raises(AdapterNotFound):
        store.delete(name)
    assert _tree(tmp_path) == before


def test_recover_does_not_restore_over_a_symlink(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path)
    store.commit(store.stage({"adapter_config.json": b"old"}), "a")
    store._to_trash(tmp_path / "a", ".replace")  # a crash mid-replace ...
    (tmp_path / "a").symlink_to(tmp_path / "elsewhere")  # ... then someone put a link there
    store.recover()
    assert (tmp_path / "a").is_symlink()


def test_a_folder_renamed_away_mid_look_is_absent_not_foreign(tmp_path, monkeypatch) -> None:
    # A concurrent replace moves the old folder into the trash between lstat and scandir: that is
    # a name in passing, not someone else's file (which would answer 409 name_taken).
    store = AdapterStore(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "adapter_config.json").write_text("{}")

    def gone(path):
        raise FileNotFoundError(path)

    monkeypatch.setattr(os, "scandir", gone)
    assert store.kind("a") == "absent"


def test_exists_is_true_for_an_adapter_folder_only(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path)
    store.commit(store.stage({CONFIG: b"{}"}), "a")
    (tmp_path / "notes.txt").write_text("x")
    assert store.exists("a") is True
    assert store.exists("notes.txt") is False and store.exists("missing") is False


def test_a_foreign_name_is_taken_with_the_name_field_and_why(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    staged = store.stage({CONFIG: b"{}"})
    for attempt in (
        lambda: store.check_ours("notes.txt"),
        lambda: store.commit(staged, "notes.txt"),
    ):
        with pytest.raises(NameTaken) as info:
            attempt()
        assert (info.value.code, info.value.param) == ("name_taken", "name")
        assert info.value.message == (
            "'notes.txt' in the adapters folder is not an adapter this service manages; "
            "choose another name"
        )


def test_delete_of_a_missing_name_is_not_found_naming_the_name_field(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path)
    with pytest.raises(AdapterNotFound) as info:
        store.delete("missing")
    assert (info.value.message, info.value.param) == ("adapter 'missing' not found", "name")
    with pytest.raises(AdapterNotFound) as info:
        store.delete("x" * 100)
    assert info.value.message == f"adapter '{'x' * 64}... (100 characters)' not found"


def test_delete_empties_the_trash(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path)
    store.commit(store.stage({CONFIG: b"one", WEIGHTS: b"x"}), "a")
    store.delete("a")
    assert list((tmp_path / ".trash").iterdir()) == []


def test_delete_is_done_once_renamed_even_if_emptying_the_trash_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = AdapterStore(tmp_path)
    store.commit(store.stage({CONFIG: b"one", WEIGHTS: b"x"}), "a")

    def busy(path, *args, **kwargs):
        raise OSError(16, "Device or resource busy", path)  # say, a file held open over NFS

    monkeypatch.setattr(os, "unlink", busy)
    store.delete("a")
    monkeypatch.undo()
    assert not store.exists("a") and store.names() == []
    AdapterStore(tmp_path).recover()  # the next start-up empties what was left
    assert list((tmp_path / ".trash").iterdir()) == []


def test_the_root_is_created_with_its_parents(tmp_path: Path) -> None:
    AdapterStore(tmp_path / "deep" / "adapters")
    assert sorted(p.name for p in (tmp_path / "deep" / "adapters").iterdir()) == [
        ".staging",
        ".trash",
    ]


def test_a_folder_of_every_peft_file_is_an_adapter(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path)
    (tmp_path / "full").mkdir()
    for f in (CONFIG, WEIGHTS, "adapter_model.bin", "README.md"):
        (tmp_path / "full" / f).write_bytes(b"x")
    assert store.kind("full") == "adapter"


def test_a_folder_that_cannot_be_listed_is_foreign(tmp_path, monkeypatch) -> None:
    store = AdapterStore(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / CONFIG).write_text("{}")

    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(os, "scandir", denied)
    assert store.kind("a") == "foreign"
    with pytest.raises(NameTaken):
        store.check_ours("a")


def test_names_leave_out_dot_folders_even_adapter_shaped_ones(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path)
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / CONFIG).write_text("{}")
    store.commit(store.stage({CONFIG: b"{}"}), "a")
    assert store.names() == ["a"]


def test_a_failed_stage_leaves_nothing_and_raises_its_own_error(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path)
    with pytest.raises(FileNotFoundError):
        store.stage({CONFIG: b"{}", "no-such-dir/x": b"x"})
    assert list((tmp_path / ".staging").iterdir()) == []


def _unlink_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def busy(path, *args, **kwargs):
        raise OSError(16, "Device or resource busy", path)  # say, a file held open over NFS

    monkeypatch.setattr(os, "unlink", busy)


def test_a_failed_stage_raises_its_own_error_even_if_cleaning_up_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = AdapterStore(tmp_path)
    _unlink_fails(monkeypatch)
    with pytest.raises(FileNotFoundError):
        store.stage({CONFIG: b"{}", "no-such-dir/x": b"x"})


def test_a_replace_is_done_once_renamed_even_if_emptying_the_trash_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = AdapterStore(tmp_path)
    store.commit(store.stage({CONFIG: b"one"}), "a")
    staged = store.stage({CONFIG: b"two"})
    _unlink_fails(monkeypatch)
    store.commit(staged, "a")
    monkeypatch.undo()
    assert (tmp_path / "a" / CONFIG).read_bytes() == b"two"


def test_a_name_taken_between_the_check_and_the_rename_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = AdapterStore(tmp_path)
    real = store.check_ours

    def check_then_someone_writes(name: str):
        kind = real(name)
        (tmp_path / name).mkdir()
        (tmp_path / name / "notes.txt").write_text("mine")
        return kind

    monkeypatch.setattr(store, "check_ours", check_then_someone_writes)
    with pytest.raises(NameTaken) as info:
        store.commit(store.stage({CONFIG: b"{}"}), "x")
    assert info.value.message == (
        "'x' in the adapters folder is not an adapter this service manages; choose another name"
    )
    assert (tmp_path / "x" / "notes.txt").read_text() == "mine"


def test_commit_passes_on_other_rename_errors(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path)
    with pytest.raises(FileNotFoundError):
        store.commit(tmp_path / ".staging" / "never-staged", "x")


def test_recover_tolerates_stray_files_in_the_scratch_folders(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path)
    store.commit(store.stage({CONFIG: b"old"}), "a")
    store._to_trash(tmp_path / "a", ".replace")
    (tmp_path / ".trash" / "stray").write_text("x")
    (tmp_path / ".staging" / "stray").write_text("x")
    AdapterStore(tmp_path).recover()
    assert (tmp_path / "a" / CONFIG).read_bytes() == b"old"
    # Tolerated, and cleaned up: a plain file or a link left there is removed, not kept forever.
    assert list((tmp_path / ".trash").iterdir()) == []
    assert list((tmp_path / ".staging").iterdir()) == []


def test_recover_removes_a_link_in_the_scratch_folders_but_not_its_target(tmp_path: Path) -> None:
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / "keep").write_text("x")
    store = AdapterStore(tmp_path)
    (tmp_path / ".staging" / "link").symlink_to(outside)
    store.recover()
    assert not os.path.lexists(tmp_path / ".staging" / "link")
    assert (outside / "keep").read_text() == "x"
