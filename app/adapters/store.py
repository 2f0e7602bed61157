"""Adapter folders on disk, changed only by atomic renames.

Every write is staged in `.staging/` on the same filesystem, fsynced, then renamed into place.
Replacing or deleting first renames the old folder into `.trash/`; `recover()` at start-up puts
back an adapter whose replacement was cut short by a crash, and empties both scratch folders.
So a crash leaves either the old adapter or the new one, never a half.

The store only ever creates, replaces or deletes adapter folders: a real directory (not a symlink)
holding nothing but PEFT adapter files. Anything else in the folder (an operator's notes, a README,
a symlink, an empty or unrelated directory) is foreign: never listed, never touched.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import uuid
from pathlib import Path
from typing import Literal

from app.adapters.peft_format import CONFIG_FILE, WEIGHTS_FILE
from app.errors import AdapterNotFound, NameTaken, shorten

log = logging.getLogger(__name__)

EntryKind = Literal["adapter", "foreign", "absent"]
# What PEFT's save_pretrained writes into an adapter folder (the .bin only by old versions).
PEFT_FILES = frozenset({CONFIG_FILE, WEIGHTS_FILE, "adapter_model.bin", "README.md"})
_ADAPTER_FILES = PEFT_FILES - {"README.md"}  # a folder of only a README is not an adapter

_STAGING = ".staging"
_TRASH = ".trash"
# A trash entry's suffix says what to do with it after a crash.
_REPLACING = (
    ".replace"  # the old copy of an adapter being overwritten: restore if the new is absent
)
_DELETING = ".delete"  # a deleted adapter: the rename was the delete, so drop it


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AdapterStore:
    """The folder ADAPTERS_DIR: one sub-folder per adapter, scratch folders starting with '.'."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / _STAGING).mkdir(exist_ok=True)
        (self.root / _TRASH).mkdir(exist_ok=True)

    def path(self, name: str) -> Path:
        return self.root / name

    def kind(self, name: str) -> EntryKind:
        """`adapter`: a real folder of only PEFT files (one of them config or weights)."""
        path = self.path(name)
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return "absent"
        if not stat.S_ISDIR(mode):  # plain files, symlinks (lstat does not follow them), ...
            return "foreign"
        try:
            with os.scandir(path) as it:
                entries = [(e.name, e.is_file(follow_symlinks=False)) for e in it]
        except FileNotFoundError:
            return "absent"  # renamed away (replaced or deleted) since the lstat
        except OSError:
            return "foreign"
        names = {n for n, _ in entries}
        if not names & _ADAPTER_FILES or not names <= PEFT_FILES:
            return "foreign"
        return "adapter" if all(is_file for _, is_file in entries) else "foreign"

    def exists(self, name: str) -> bool:
        return self.kind(name) == "adapter"

    def check_ours(self, name: str) -> EntryKind:
        """The entry's kind, or 409 `name_taken` when a foreign entry holds the name."""
        kind = self.kind(name)
        if kind == "foreign":
            raise _name_taken(name)
        return kind

    def names(self) -> list[str]:
        """Every adapter folder (scratch folders and foreign entries left out), sorted."""
        found = []
        for entry in sorted(p.name for p in self.root.iterdir() if not p.name.startswith(".")):
            if self.kind(entry) == "adapter":
                found.append(entry)
            else:
                log.debug("ignoring %s in the adapters folder: not an adapter", shorten(entry))
        return found

    def stage(self, files: dict[str, bytes]) -> Path:
        """Write `files` into a fresh staging folder and fsync them; nothing is visible yet."""
        staged = self.root / _STAGING / uuid.uuid4().hex
        staged.mkdir()
        try:
            for filename, data in files.items():
                with (staged / filename).open("wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            _fsync_dir(staged)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        return staged

    def discard(self, staged: Path) -> None:
        shutil.rmtree(staged, ignore_errors=True)

    def commit(self, staged: Path, name: str) -> None:
        """Publish a staged folder as `name`, replacing any adapter (never a foreign entry)."""
        target = self.path(name)
        kind = self.check_ours(name)
        old = self._to_trash(target, _REPLACING) if kind == "adapter" else None
        try:
            os.replace(staged, target)
        except OSError as exc:
            # Something not ours appeared at the name since the check; leave it be.
            if exc.errno not in (errno.ENOTDIR, errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                raise
            raise _name_taken(name) from exc
        _fsync_dir(self.root)
        if old is not None:
            shutil.rmtree(old.parent, ignore_errors=True)

    def delete(self, name: str) -> None:
        """Remove an adapter folder; the rename into the trash is the moment it is gone."""
        if self.kind(name) != "adapter":
            raise AdapterNotFound(f"adapter {shorten(name)!r} not found", "name")
        trashed = self._to_trash(self.path(name), _DELETING)
        shutil.rmtree(trashed.parent, ignore_errors=True)

    def recover(self) -> None:
        """Finish or undo whatever a crash interrupted; called once before the scan."""
        for entry in (self.root / _TRASH).iterdir():
            for old in entry.iterdir() if entry.is_dir() else []:
                target = self.path(old.name)
                if entry.name.endswith(_REPLACING) and not os.path.lexists(target):
                    log.warning("restoring adapter %s after an interrupted replace", old.name)
                    os.replace(old, target)
            _remove(entry)
        for entry in (self.root / _STAGING).iterdir():
            _remove(entry)
        _fsync_dir(self.root)

    def _to_trash(self, target: Path, suffix: str) -> Path:
        holder = self.root / _TRASH / (uuid.uuid4().hex + suffix)
        holder.mkdir()
        trashed = holder / target.name
        os.replace(target, trashed)
        _fsync_dir(self.root)
        return trashed


def _remove(entry: Path) -> None:
    """A leftover of a crash, whatever it is: a folder, a plain file or a link."""
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)


def _name_taken(name: str) -> NameTaken:
    return NameTaken(
        f"{shorten(name)!r} in the adapters folder is not an adapter this service manages; "
        "choose another name",
        "name",
    )
