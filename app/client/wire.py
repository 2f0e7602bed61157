"""The service's wire, as the client sees it: the error envelope, request bodies, answers."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import torch
from safetensors.torch import load
from torch import Tensor

OCTET = "application/octet-stream"
# Multipart parts by file suffix; the service reads the bytes, not the part's type, so this is
# for proxies and logs. Anything else goes as octet-stream.
DATASET_TYPES = {".jsonl": "application/jsonl", ".json": "application/json"}
Messages = Sequence[dict[str, Any]]  # [{"role": "user", "content": "..."}, ...]


class ServiceError(Exception):
    """An error answer from the service: HTTP status, machine code, message, field."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.param = status, code, message, param


def raise_for_error(response: httpx.Response) -> httpx.Response:
    """The response if it succeeded; else `ServiceError` from the error envelope."""
    if response.is_success:
        return response
    try:
        error = response.json()["error"]
        raise ServiceError(
            response.status_code, error["code"], error["message"], error.get("param")
        )
    except (ValueError, KeyError, TypeError):
        raise ServiceError(response.status_code, "http_error", response.text[:200]) from None


def answer_json(response: httpx.Response) -> Any:
    return response.json()


def answer_data(response: httpx.Response) -> Any:
    return response.json()["data"]


def answer_outputs(response: httpx.Response) -> Tensor:
    return load(response.content)["outputs"]


def answer_embeddings(response: httpx.Response) -> Tensor:
    """The float embeddings of a /v1/embeddings answer, in input order: (N, dim)."""
    rows = sorted(response.json()["data"], key=lambda d: d["index"])
    return torch.tensor([d["embedding"] for d in rows], dtype=torch.float32)


def pairs_jsonl(pairs: Sequence[tuple[str, str] | dict[str, Any]]) -> bytes:
    """(anchor, positive) tuples as pairs; dict rows (chats) as they are."""
    lines = (
        json.dumps(r if isinstance(r, dict) else {"anchor": r[0], "positive": r[1]}) for r in pairs
    )
    return ("\n".join(lines) + "\n").encode()


def dataset_file(filename: str, data: bytes) -> dict[str, tuple[str, bytes, str]]:
    kind = DATASET_TYPES.get(Path(filename).suffix.lower(), OCTET)
    return {"file": (filename, data, kind)}


def generation_body(model: str | None, options: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {**fields, "model": model, **options}


def stream_body(model: str | None, options: dict[str, Any], **fields: Any) -> dict[str, Any]:
    # Deltas of several choices would interleave with nothing to tell them apart.
    if options.get("n", 1) != 1:
        raise ValueError("a stream yields one choice's text; for n > 1 use chat() or complete()")
    return {**generation_body(model, options, **fields), "stream": True}


def event_text(line: str, status: int) -> str | None:
    """The text one server-sent line adds ('' for none), None at `data: [DONE]`.

    An `error` event raises ServiceError; it comes after a 200 began, so `status` is the stream's.
    """
    if not line.startswith("data:"):
        return ""  # the blank line between events, or a comment
    data = line.removeprefix("data:").strip()
    if data == "[DONE]":
        return None
    event = json.loads(data)
    if "error" in event:
        e = event["error"]
        raise ServiceError(status, e.get("code"), e.get("message"), e.get("param"))
    # Chat chunks carry choices[0].delta.content, completion chunks choices[0].text; the usage
    # chunk has no choices.
    return "".join(c.get("text") or (c.get("delta") or {}).get("content") or ""
                   for c in event.get("choices", []))  # fmt: skip


def unfinished(status: int) -> ServiceError:
    return ServiceError(status, "stream_incomplete", "the stream ended before data: [DONE]")


def adapter_files(folder: str | Path) -> dict[str, tuple[str, bytes]]:
    folder = Path(folder)
    return {
        "config": ("adapter_config.json", (folder / "adapter_config.json").read_bytes()),
        "weights": (
            "adapter_model.safetensors",
            (folder / "adapter_model.safetensors").read_bytes(),
        ),
    }


def unzip_to(dest: str | Path) -> Callable[[httpx.Response], Path]:
    def write(response: httpx.Response) -> Path:
        target = Path(dest)
        target.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
            for name in ("adapter_config.json", "adapter_model.safetensors"):
                (target / name).write_bytes(archive.read(name))
        return target

    return write


# The statuses a training job ends in.
DONE = ("succeeded", "failed", "cancelled")


def headers_for(api_key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {api_key}"} if api_key else {}
