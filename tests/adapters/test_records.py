"""Records of adapter versions: read from the database, ready or broken, and why."""

from __future__ import annotations

import errno
import json

import pytest
import torch
from safetensors import SafetensorError

from app.adapters import peft_format as fmt
from app.adapters.catalog import VersionRow
from app.adapters.records import AdapterProblem, AdapterRecord, BaseInfo, problem_of, record_of
from app.errors import AdapterBroken, InvalidAdapter
from support.helpers import TINY_SIZES, linears_of, peft_config

BASE = BaseInfo(linears_of(TINY_SIZES), "tiny", "f" * 64, torch.device("cpu"), torch.float32)
TARGETS = ("layer1", "layer2")
CONFIG = json.dumps(peft_config(4, 8, TARGETS)).encode()


def row(config: bytes = CONFIG, metadata: dict[str, str] | None = None, problem=None) -> VersionRow:
    return VersionRow(
        project="p", name="a", id="v" * 64, size_bytes=10, stored_bytes=20,
        weights_sha256="s" * 64, config=config.decode(), metadata=json.dumps(metadata or {}),
        source="upload", created_at=123, problem=problem,
    )  # fmt: skip


def test_a_row_makes_a_ready_record_with_its_config_and_header() -> None:
    record = record_of(row(metadata={"source": "training", "job_id": "j"}), BASE, 16)
    assert record.status == "ready" and record.config is not None and record.config.r == 4
    assert (record.project, record.name, record.version) == ("p", "a", "v" * 64)
    assert (record.size_bytes, record.stored_bytes, record.created_at) == (10, 20, 123)
    assert record.source == "training" and record.metadata["job_id"] == "j"


@pytest.mark.parametrize("source", [None, "elsewhere", "upload"])
def test_source_is_upload_unless_the_header_says_training(source) -> None:
    metadata = {} if source is None else {"source": source}
    assert record_of(row(metadata=metadata), BASE, 16).source == "upload"


def test_a_config_that_does_not_fit_this_base_makes_a_broken_record() -> None:
    config = json.dumps(peft_config(4, 8, ["layer9"])).encode()
    record = record_of(row(config), BASE, 16)
    assert record.status == "broken" and record.config is None
    assert record.error is not None and record.error.code == "invalid_adapter"


def test_a_problem_found_at_load_makes_a_broken_record() -> None:
    problem = json.dumps({"code": "unreadable", "message": "cannot read it"})
    record = record_of(row(problem=problem), BASE, 16)
    assert record.error == AdapterProblem("unreadable", "cannot read it")
    with pytest.raises(AdapterBroken):
        record.ready_config()


@pytest.mark.parametrize(
    ("exc", "problem"),
    [
        (
            FileNotFoundError(errno.ENOENT, "No such file or directory", "/srv/secret/a/x.json"),
            AdapterProblem("unreadable", "cannot read x.json: No such file or directory"),
        ),
        (
            OSError(errno.EIO, "Input/output error"),
            AdapterProblem("unreadable", "cannot read the adapter's files: Input/output error"),
        ),
        (OSError("boom"), AdapterProblem("unreadable", "cannot read the adapter's files: boom")),
        (
            # As safetensors raises it: the path in the text, no filename or strerror.
            FileNotFoundError("No such file or directory: /srv/secret/a/adapter_model.safetensors"),
            AdapterProblem(
                "unreadable",
                "cannot read the adapter's files: No such file or directory: "
                "adapter_model.safetensors",
            ),
        ),
        (
            # As obstore raises it: a debug dump after the first line.
            FileNotFoundError(
                "Object at location /srv/secret/.store/p/v/adapter_model.safetensors not found: "
                "No such file or directory (os error 2)\n\nDebug source:\nNotFound {\n    path: "
                '"/srv/secret/.store/p/v/adapter_model.safetensors",\n}'
            ),
            AdapterProblem(
                "unreadable",
                "cannot read the adapter's files: Object at location adapter_model.safetensors "
                "not found: No such file or directory (os error 2)",
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
        "object-store-error-with-a-debug-dump",
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
    return AdapterRecord(
        "default",
        "a",
        "v" * 64,
        config,
        1,
        2,
        "s" * 64,
        0,
        "upload",
        {},
        error=error,  # type: ignore[arg-type]
    )


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
