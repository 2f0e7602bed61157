"""Import the older store layout: one folder per adapter name right under ADAPTERS_DIR.

Each folder that holds PEFT files is checked as an upload is and registered, its files kept
byte for byte, then moved to `.imported/` so that it is not imported twice and nothing is lost.
A folder that fails the checks, or whose name already serves other files, stays where it is,
and the report says why. Anything else in the folder (notes, links, unrelated folders) is not
an adapter and is left alone, as the older store left it.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from app.adapters import peft_format as fmt
from app.adapters.registry import AdapterRegistry
from app.errors import AdapterExists, ServiceError, shorten
from app.state.tables import DEFAULT_PROJECT

log = logging.getLogger(__name__)

# What PEFT's save_pretrained writes into an adapter folder (the .bin only by old versions).
PEFT_FILES = frozenset({fmt.CONFIG_FILE, fmt.WEIGHTS_FILE, "adapter_model.bin", "README.md"})
_ADAPTER_FILES = PEFT_FILES - {"README.md"}
IMPORTED = ".imported"


@dataclass
class ImportReport:
    imported: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)  # already registered with these files
    refused: dict[str, str] = field(default_factory=dict)  # name -> why it stayed

    def __bool__(self) -> bool:
        return bool(self.imported or self.unchanged or self.refused)


def is_adapter_folder(path: Path) -> bool:
    """A real folder (not a link) of nothing but PEFT files, one of them config or weights."""
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            return False
        with os.scandir(path) as it:
            entries = [(e.name, e.is_file(follow_symlinks=False)) for e in it]
    except OSError:
        return False
    names = {n for n, _ in entries}
    return bool(names & _ADAPTER_FILES) and names <= PEFT_FILES and all(f for _, f in entries)


def _restore_interrupted(root: Path) -> None:
    """The older store renamed a replaced adapter into `.trash/<id>.replace/<name>` first: if a
    crash came before the new one was in place, the old one is the adapter."""
    trash = root / ".trash"
    for holder in trash.glob("*.replace") if trash.is_dir() else []:
        for old in holder.iterdir():
            if not os.path.lexists(root / old.name):
                log.warning("restoring adapter %s after an interrupted replace", old.name)
                os.replace(old, root / old.name)


def import_folder(
    registry: AdapterRegistry, root: Path, project: str = DEFAULT_PROJECT
) -> ImportReport:
    """Register every adapter folder under `root` (see the module's docstring)."""
    report = ImportReport()
    if not root.is_dir():
        return report
    _restore_interrupted(root)
    for path in sorted(p for p in root.iterdir() if not p.name.startswith(".")):
        if not is_adapter_folder(path):
            log.debug("leaving %s in the adapters folder: not an adapter", shorten(path.name))
            continue
        name = path.name
        try:
            fmt.check_name(name)
            files = [path / fmt.CONFIG_FILE, path / fmt.WEIGHTS_FILE]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise ServiceError(f"{', '.join(missing)} missing")
            config, weights = (f.read_bytes() for f in files)
            try:
                registry.import_files(name, config, weights, project)
                report.imported.append(name)
            except AdapterExists:
                if registry.files(name, project) != {
                    fmt.CONFIG_FILE: config,
                    fmt.WEIGHTS_FILE: weights,
                }:
                    raise
                report.unchanged.append(name)
        except (ServiceError, OSError) as exc:
            reason = exc.message if isinstance(exc, ServiceError) else str(exc)
            report.refused[name] = shorten(reason, 300)
            log.warning("not importing adapter folder %s: %s", shorten(name), reason)
            continue
        _move_aside(root, path)
    if report:
        log.info(
            "imported %d adapter folders from %s (%d already there, %d refused)",
            len(report.imported), root, len(report.unchanged), len(report.refused),
        )  # fmt: skip
    return report


def _move_aside(root: Path, path: Path) -> None:
    done = root / IMPORTED
    done.mkdir(exist_ok=True)
    target = done / path.name
    n = 1
    while os.path.lexists(target):
        n += 1
        target = done / f"{path.name}.{n}"
    os.replace(path, target)
