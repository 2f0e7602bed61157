"""What the registry reads of an adapter folder without loading it: ready records, broken ones."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import save

from app.adapters import peft_format as fmt
from app.adapters.records import (
    AdapterProblem,
    AdapterRecord,
    BaseInfo,
    broken_record,
    problem_of,
    read_record,
)
from app.errors import AdapterBroken, InvalidAdapter
from tests.helpers import TINY_SIZES, linears_of, lora_tensors, peft_config

BASE = BaseInfo(linears_of(TINY_SIZES), "tiny", "f" * 64, torch.device("cpu"), torch.float32)
TARGETS = ("layer1", "layer2")
CONFIG = json.dumps(peft_config(4, 8, TARGETS)).encode()
MTIME = 1_000_000_000  # what the files' mtime is set to, so a fallback to it is recognisable


def write_folder(folder: Path, header: dict[str, str] | None = None, **files: bytes) -> Path:
    """An adapter folder: a valid config and weights (with `header`), or exactly `files`."""
    folder.mkdir()
    if not files:
        weights = save(lora_tensors(TINY_SIZES, TARGETS, 4), metadata=header)
        files = {fmt.CONFIG_FILE: CONFIG, fmt.WEIGHTS_FILE: weights}
    for filename, data in files.items():
        (folder / filename).write_bytes(data)
        os.utime(folder / filename, (MTIME, MTIME))
    os.utime(folder, (MTIME + 5, MTIME + 5))
    return folder


def test_read_record_takes_created_at_and_source_from_the_header(tmp_path: Path) -> None:
    header = {"format": "pt", "created_at": "123", "source": "training", "note": "x"}
    folder = write_folder(tmp_path / "a", header)
    record = read_record(folder, "a", BASE, 16, version=7)
    assert record == AdapterRecord(
        name="a",
        config=fmt.parse_config(CONFIG, BASE.linears, 16),
        size_bytes=(folder / fmt.WEIGHTS_FILE).stat().st_size,
        created_at=123,
        source="training",
        metadata=header,
        version=7,
    )
    assert record.status == "ready" and record.error is None


@pytest.mark.parametrize(
    ("created_at", "expected"),
    [
        (None, MTIME),  # no entry: the weights file's mtime
        ("", MTIME),
        ("yesterday", MTIME),
        ("-5", MTIME),
        ("1" * 18, int("1" * 18)),
        ("9" * 19, MTIME),  # 19 digits or more is not a time this service wrote
        ("9" * 20, MTIME),
    ],
)
def test_created_at_falls_back_to_the_mtime_unless_the_header_holds_a_plain_number(
    tmp_path: Path, created_at: str | None, expected: int
) -> None:
    header = {"format": "pt"} if created_at is None else {"created_at": created_at}
    record = read_record(write_folder(tmp_path / "a", header), "a", BASE, 16, version=1)
    assert record.error is None and record.created_at == expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [(None, "upload"), ("upload", "upload"), ("training", "training"), ("evil", "upload")],
)
def test_source_is_upload_unless_the_header_says_training(
    tmp_path: Path, source: str | None, expected: str
) -> None:
    header = {"format": "pt"} if source is None else {"source": source}
    record = read_record(write_folder(tmp_path / "a", header), "a", BASE, 16, version=1)
    assert record.error is None and record.source == expected


def test_a_folder_that_fails_is_a_broken_record_of_what_could_be_read(tmp_path: Path) -> None:
    truncated = save(lora_tensors(TINY_SIZES, TARGETS, 4))[:100]
    folder = write_folder(tmp_path / "a", **{fmt.CONFIG_FILE: CONFIG, fmt.WEIGHTS_FILE: truncated})
    record = read_record(folder, "a", BASE, 16, version=9)
    assert (record.name, record.config, record.size_bytes, record.created_at) == (
        "a",
        None,
        100,
        MTIME + 5,  # the folder's mtime: the header cannot be trusted
    )
    assert (record.source, record.metadata, record.version) == ("upload", {}, 9)
    assert record.status == "broken" and record.error is not None
    assert record.error.code == "invalid_adapter"
    assert record.error.message.startswith(f"{fmt.WEIGHTS_FILE}: ")


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        (
            {fmt.CONFIG_FILE: CONFIG, "adapter_model.bin": b"\x80\x04junk"},
            AdapterProblem(
                "invalid_adapter", "adapter_model.bin is a pickle; only safetensors is read"
            ),
        ),
        (
            {fmt.CONFIG_FILE: CONFIG},
            AdapterProblem("invalid_adapter", "adapter_model.safetensors is missing"),
        ),
        (
            {fmt.WEIGHTS_FILE: save(lora_tensors(TINY_SIZES, TARGETS, 4))},
            AdapterProblem(
                "unreadable", "cannot read adapter_config.json: No such file or directory"
            ),
        ),
        (
            {fmt.CONFIG_FILE: b"[]", fmt.WEIGHTS_FILE: save(lora_tensors(TINY_SIZES, TARGETS, 4))},
            AdapterProblem("invalid_adapter", "adapter_config.json must be a JSON object"),
        ),
    ],
    ids=["pickle", "no-weights", "no-config", "config-not-an-object"],
)
def test_a_broken_folder_says_why_exactly(
    tmp_path: Path, files: dict[str, bytes], problem: AdapterProblem
) -> None:
    record = read_record(write_folder(tmp_path / "a", **files), "a", BASE, 16, version=1)
    assert record.error == problem


def test_broken_record_of_a_vanished_folder_keeps_the_config_it_is_given(tmp_path: Path) -> None:
    config = fmt.parse_config(CONFIG, BASE.linears, 16)
    problem = AdapterProblem("unreadable", "cannot read the adapter folder: gone")
    record = broken_record(tmp_path / "gone", "gone", problem, 3, config)
    assert record == AdapterRecord("gone", config, None, 0, "upload", {}, 3, error=problem)


@pytest.mark.parametrize(
    ("exc", "problem"),
    [
        (
            FileNotFoundError(errno.ENOENT, "No such file or directory", "/srv/secret/a/x.json"),
            AdapterProblem("unreadable", "cannot read x.json: No such file or directory"),
        ),
        (
            OSError(errno.EIO, "Input/output error"),
            AdapterProblem("unreadable", "cannot read the adapter folder: Input/output error"),
        ),
        (OSError("boom"), AdapterProblem("unreadable", "cannot read the adapter folder: boom")),
        (
            # As safetensors raises it: the path in the text, no filename or strerror.
            FileNotFoundError("No such file or directory: /srv/secret/a/adapter_model.safetensors"),
            AdapterProblem(
                "unreadable",
                "cannot read the adapter folder: No such file or directory: "
                "adapter_model.safetensors",
            ),
        ),
        (
            SafetensorError("Error while deserializing header: /srv/secret/w.safetensors"),
            AdapterProblem(
                "invalid_adapter",
                f"{fmt.WEIGHTS_FILE}: Error while deserializing header: w.safetensors",
            ),
        ),
        (
            ValueError("x" * 300),
            AdapterProblem(
                "invalid_adapter", f"{fmt.WEIGHTS_FILE}: {'x' * 256}... (300 characters)"
            ),
        ),
        (
            InvalidAdapter("missing tensors ['k']", "weights"),
            AdapterProblem("invalid_adapter", "missing tensors ['k']"),
        ),
    ],
    ids=[
        "os-error-with-path",
        "os-error-without-path",
        "os-error-without-strerror",
        "os-error-with-the-path-in-its-text",
        "library-error-with-a-path",
        "long",
        "ours",
    ],
)
def test_problem_of_gives_a_code_and_a_message_without_server_paths(
    exc: BaseException, problem: AdapterProblem
) -> None:
    assert problem_of(exc) == problem


def _record(error: AdapterProblem | None, config: object = "unset") -> AdapterRecord:
    if config == "unset":
        config = fmt.parse_config(CONFIG, BASE.linears, 16)
    return AdapterRecord("a", config, 1, 0, "upload", {}, 1, error=error)  # type: ignore[arg-type]


def test_a_broken_record_refuses_with_its_reason_and_the_field() -> None:
    record = _record(AdapterProblem("invalid_adapter", "weights are bad"))
    expected = (
        "adapter 'a' is broken (weights are bad); an admin can replace it "
        "(overwrite=true) or delete it"
    )
    assert record.status == "broken"
    error = record.broken_error()
    assert isinstance(error, AdapterBroken)
    assert (error.code, error.message, error.param) == ("adapter_broken", expected, "adapter")
    with pytest.raises(AdapterBroken) as info:
        record.ready_config("name")
    assert (info.value.message, info.value.param) == (expected, "name")


def test_a_record_without_a_config_is_broken_for_want_of_one() -> None:
    record = _record(None, config=None)
    with pytest.raises(AdapterBroken) as info:
        record.ready_config()
    assert info.value.message == (
        "adapter 'a' is broken (no valid config); an admin can replace it "
        "(overwrite=true) or delete it"
    )
    assert info.value.param == "adapter"


def test_a_ready_record_gives_its_config() -> None:
    record = _record(None)
    assert record.status == "ready" and record.ready_config() is record.config
