"""Files the CLI reads and writes for the user: datasets, inputs, outputs.

Every problem with one is an InputError, which the CLI reports as a usage error (exit 2).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file


class InputError(Exception):
    """A file or setting the user gave is missing, unreadable or malformed."""


def read_safetensors(path: Path, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The named tensors of a safetensors file, each (N, width)."""
    try:
        tensors = load_file(path)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    except SafetensorError as exc:
        raise InputError(f"{path} is not a safetensors file: {exc}") from None
    for name in names:
        if name not in tensors:
            raise InputError(
                f"{path} has no tensor {name!r} (it has: {', '.join(tensors) or 'none'})"
            )
        if tensors[name].ndim != 2:
            raise InputError(
                f"{path}: {name!r} must be (rows, width), not {tuple(tensors[name].shape)}"
            )
    return tensors


def read_json(path: Path) -> Any:
    """A JSON file's value."""
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:  # bad JSON or bad UTF-8
        raise InputError(f"{path} is not JSON: {exc}") from None


def read_inputs(path: Path) -> torch.Tensor:
    """Rows to predict: a safetensors file with `inputs`, or JSON `{"inputs": [[...]]}` or `[[...]]`."""
    if path.suffix == ".safetensors":
        return read_safetensors(path, ("inputs",))["inputs"]
    data = read_json(path)
    rows = data.get("inputs") if isinstance(data, dict) else data
    try:
        x = torch.tensor(rows, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError):
        x = None
    if x is None or x.ndim != 2:
        raise InputError(f'{path}: expected {{"inputs": [[numbers], ...]}}, rows of equal length')
    return x


def write(path: Path, write: Any) -> None:
    try:
        write(path)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None


def _is_chat(data: bytes) -> bool:
    """Whether the first row is a decoder base's: {"messages"} or {"prompt", "completion"}."""
    text = data.lstrip()
    try:
        first = json.loads(text)[0] if text.startswith(b"[") else json.loads(text.splitlines()[0])
    except (ValueError, IndexError, KeyError, TypeError):
        return False
    return isinstance(first, dict) and ("messages" in first or "prompt" in first)


def read_text_dataset(path: Path) -> bytes:
    """A JSONL or JSON dataset file, its bytes unchanged.

    Text pairs {anchor, positive} are checked here as the service will. Chat rows are left to
    the service: their rules (roles, the chat template, the context) depend on its base model.
    """
    from app.errors import ServiceError as Refused
    from app.families.encoder.datasets import parse_pairs

    try:
        data = path.read_bytes()
        if not _is_chat(data):
            parse_pairs(data, max_rows=sys.maxsize)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    except Refused as exc:
        raise InputError(f"{path}: {exc.message}") from None
    return data
