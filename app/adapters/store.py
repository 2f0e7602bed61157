"""Adapter folders on disk, changed only by atomic renames.

Every write is staged in `.staging/` on the same filesystem, fsynced, then renamed into place.
Replacing or deleting first renames the old folder into `.trash/`; `recover()` at start-up puts
back an adapter whose replacement was cut short by a crash, and empties both scratch folders.
So a crash leaves either the old adapter or the new one, never a half.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

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

    def exists(self, name: str) -> bool:
        return self.path(name).is_dir()

    def names(self) -> list[str]:
        """Every entry that is not a scratch or hidden folder, sorted."""
        return sorted(p.name for p in self.root.iterdir() if not p.name.startswith("."))

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
        """Publish a staged folder as `name`, replacing any adapter already there."""
        target = self.path(name)
        old = None
        if target.exists():
            old = self._to_trash(target, _REPLACING)
        os.replace(staged, target)
        _fsync_dir(self.root)
        if old is not None:
            shutil.rmtree(old.parent, ignore_errors=True)

    def delete(self, name: str) -> None:
        """Remove an adapter; the rename into the trash is the moment it is gone."""
        trashed = self._to_trash(self.path(name), _DELETING)
        shutil.rmtree(trashed.parent, ignore_errors=True)

    def recover(self) -> None:
        """Finish or undo whatever a crash interrupted; called once before the scan."""
        for entry in (self.root / _TRASH).iterdir():
            for old in entry.iterdir() if entry.is_dir() else []:
                target = self.path(old.name)
                if entry.name.endswith(_REPLACING) and not target.exists():
                    log.warning("restoring adapter %s after an interrupted replace", old.name)
                    os.replace(old, target)
            shutil.rmtree(entry, ignore_errors=True)
        for entry in (self.root / _STAGING).iterdir():
            shutil.rmtree(entry, ignore_errors=True)
        _fsync_dir(self.root)

    def _to_trash(self, target: Path, suffix: str) -> Path:
        holder = self.root / _TRASH / (uuid.uuid4().hex + suffix)
        holder.mkdir()
        trashed = holder / target.name
        os.replace(target, trashed)
        _fsync_dir(self.root)
        return trashed
