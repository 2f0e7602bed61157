"""A Python client for the service, sync (`Client`) and async (`AsyncClient`), on httpx.

    from app.client import Client
    with Client("http://127.0.0.1:8000", api_key="...") as c:
        c.upload_adapter("mine", "path/to/peft-folder")
        y = c.predict([[0.0] * 1001], adapter="mine")
        for text in c.chat_stream([{"role": "user", "content": "Hi"}], model="mine"):
            print(text, end="", flush=True)

Every operation is written once, in `_Operations`; the sync client returns its result and the
async one a coroutine of it. Errors raise `ServiceError` with the envelope's status and code.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import torch
from safetensors.torch import load, save
from torch import Tensor

OCTET = "application/octet-stream"
# Multipart parts by file suffix; the service reads the bytes, not the part's type, so this is
# for proxies and logs. Anything else goes as octet-stream.
_DATASET_TYPES = {".jsonl": "application/jsonl", ".json": "application/json"}
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


def _json(response: httpx.Response) -> Any:
    return response.json()


def _data(response: httpx.Response) -> Any:
    return response.json()["data"]


def _outputs(response: httpx.Response) -> Tensor:
    return load(response.content)["outputs"]


def _embeddings(response: httpx.Response) -> Tensor:
    """The float embeddings of a /v1/embeddings answer, in input order: (N, dim)."""
    rows = sorted(response.json()["data"], key=lambda d: d["index"])
    return torch.tensor([d["embedding"] for d in rows], dtype=torch.float32)


def _pairs_jsonl(pairs: Sequence[tuple[str, str] | dict[str, Any]]) -> bytes:
    """(anchor, positive) tuples as pairs; dict rows (chats) as they are."""
    lines = (
        json.dumps(r if isinstance(r, dict) else {"anchor": r[0], "positive": r[1]}) for r in pairs
    )
    return ("\n".join(lines) + "\n").encode()


def _dataset_file(filename: str, data: bytes) -> dict[str, tuple[str, bytes, str]]:
    kind = _DATASET_TYPES.get(Path(filename).suffix.lower(), OCTET)
    return {"file": (filename, data, kind)}


def _generation_body(model: str | None, options: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {**fields, "model": model, **options}


def _stream_body(model: str | None, options: dict[str, Any], **fields: Any) -> dict[str, Any]:
    # Deltas of several choices would interleave with nothing to tell them apart.
    if options.get("n", 1) != 1:
        raise ValueError("a stream yields one choice's text; for n > 1 use chat() or complete()")
    return {**_generation_body(model, options, **fields), "stream": True}


def _event_text(line: str, status: int) -> str | None:
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


def _unfinished(status: int) -> ServiceError:
    return ServiceError(status, "stream_incomplete", "the stream ended before data: [DONE]")


def _adapter_files(folder: str | Path) -> dict[str, tuple[str, bytes]]:
    folder = Path(folder)
    return {
        "config": ("adapter_config.json", (folder / "adapter_config.json").read_bytes()),
        "weights": (
            "adapter_model.safetensors",
            (folder / "adapter_model.safetensors").read_bytes(),
        ),
    }


def _unzip_to(dest: str | Path) -> Callable[[httpx.Response], Path]:
    def write(response: httpx.Response) -> Path:
        target = Path(dest)
        target.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
            for name in ("adapter_config.json", "adapter_model.safetensors"):
                (target / name).write_bytes(archive.read(name))
        return target

    return write


class _Operations:
    """Each operation: what to send, and how to read the answer."""

    def _request(
        self, method: str, path: str, read: Callable[[httpx.Response], Any], **kw: Any
    ) -> Any:
        raise NotImplementedError  # provided by Client and AsyncClient

    def health(self) -> Any:
        return self._request("GET", "/healthz", _json)

    def ready(self) -> Any:
        return self._request("GET", "/readyz", _json)

    def model(self) -> Any:
        return self._request("GET", "/v1/model", _json)

    def list_adapters(self) -> Any:
        return self._request("GET", "/v1/adapters", _data)

    def get_adapter(self, name: str) -> Any:
        return self._request("GET", f"/v1/adapters/{name}", _json)

    def upload_adapter(self, name: str, folder: str | Path, overwrite: bool = False) -> Any:
        """Upload a PEFT adapter folder (adapter_config.json + adapter_model.safetensors)."""
        params = {"overwrite": "true"} if overwrite else None
        files = _adapter_files(folder)
        return self._request(
            "POST", "/v1/adapters", _json, data={"name": name}, files=files, params=params
        )

    def download_adapter(self, name: str, dest: str | Path) -> Any:
        """Write the adapter's two PEFT files into `dest`; returns the folder."""
        return self._request("GET", f"/v1/adapters/{name}/download", _unzip_to(dest))

    def delete_adapter(self, name: str) -> Any:
        return self._request("DELETE", f"/v1/adapters/{name}", lambda r: None)

    def predict(
        self,
        inputs: Tensor | Sequence[Sequence[float]],
        adapter: str | None = None,
        adapters: Sequence[str | None] | None = None,
        mode: str = "auto",
    ) -> Any:
        """Outputs as a float32 tensor (N, output_dim); sent as safetensors, both ways."""
        x = inputs if isinstance(inputs, Tensor) else torch.tensor(inputs, dtype=torch.float32)
        metadata = {"adapters": json.dumps(list(adapters))} if adapters is not None else None
        params = {"mode": mode, **({"adapter": adapter} if adapter else {})}
        return self._request(
            "POST", "/v1/predict", _outputs,
            content=save({"inputs": x.contiguous()}, metadata=metadata),
            params=params, headers={"content-type": OCTET, "accept": OCTET},
        )  # fmt: skip

    def embed(
        self,
        texts: str | Sequence[str],
        model: str | None = None,
        adapters: Sequence[str | None] | None = None,
    ) -> Any:
        """Embeddings of a text base as a float32 tensor (N, dim), one row per text, in order.

        `model` names an adapter (None: the base); `adapters` gives one per text instead.
        """
        body: dict[str, Any] = {"input": texts, "model": model}
        if adapters is not None:
            body["adapters"] = list(adapters)
        return self._request("POST", "/v1/embeddings", _embeddings, json=body)

    def upload_pairs(
        self,
        pairs: Sequence[tuple[str, str] | dict[str, Any]] | str | Path,
        filename: str = "pairs.jsonl",
    ) -> Any:
        """A JSONL/JSON dataset file, sent unchanged, or rows: (anchor, positive) tuples, or
        dicts such as chat rows.

        Text bases take pairs {"anchor", "positive"}; decoder bases take chat rows
        {"messages": [...]} or {"prompt", "completion"}.
        """
        if isinstance(pairs, str | Path):
            filename, data = Path(pairs).name, Path(pairs).read_bytes()
        else:
            data = _pairs_jsonl(pairs)
        return self._request("POST", "/v1/datasets", _json, files=_dataset_file(filename, data))

    def chat(self, messages: Messages, model: str | None = None, **options: Any) -> Any:
        """OpenAI's chat answer: `model` an adapter (None: the base); options as the route's."""
        body = _generation_body(model, options, messages=list(messages))
        return self._request("POST", "/v1/chat/completions", _json, json=body)

    def complete(
        self, prompt: str | Sequence[str], model: str | None = None, **options: Any
    ) -> Any:
        """OpenAI's completion answer for a prompt (or several), from `model` or the base."""
        body = _generation_body(model, options, prompt=prompt)
        return self._request("POST", "/v1/completions", _json, json=body)

    def chat_stream(self, messages: Messages, model: str | None = None, **options: Any) -> Any:
        """The chat answer's text, one delta at a time as it is generated."""
        body = _stream_body(model, options, messages=list(messages))
        return self._stream("/v1/chat/completions", body)

    def complete_stream(self, prompt: str, model: str | None = None, **options: Any) -> Any:
        """The completion's text, one delta at a time as it is generated."""
        return self._stream("/v1/completions", _stream_body(model, options, prompt=prompt))

    def _stream(self, path: str, body: dict[str, Any]) -> Any:
        raise NotImplementedError  # provided by Client and AsyncClient

    def upload_dataset(
        self, inputs: Tensor, targets: Tensor, filename: str = "data.safetensors"
    ) -> Any:
        data = save({"inputs": inputs.contiguous(), "targets": targets.contiguous()})
        return self._request("POST", "/v1/datasets", _json, files={"file": (filename, data)})

    def list_datasets(self) -> Any:
        return self._request("GET", "/v1/datasets", _data)

    def delete_dataset(self, dataset_id: str) -> Any:
        return self._request("DELETE", f"/v1/datasets/{dataset_id}", lambda r: None)

    def create_job(
        self,
        adapter_name: str,
        training_dataset: str,
        validation_dataset: str | None = None,
        **hyperparameters: Any,
    ) -> Any:
        body = {
            "adapter_name": adapter_name,
            "training_dataset": training_dataset,
            "validation_dataset": validation_dataset,
            "hyperparameters": hyperparameters,
        }
        return self._request("POST", "/v1/fine-tuning/jobs", _json, json=body)

    def get_job(self, job_id: str) -> Any:
        return self._request("GET", f"/v1/fine-tuning/jobs/{job_id}", _json)

    def list_jobs(self, limit: int = 20, after: str | None = None) -> Any:
        params = {"limit": limit, **({"after": after} if after else {})}
        return self._request("GET", "/v1/fine-tuning/jobs", _json, params=params)

    def cancel_job(self, job_id: str) -> Any:
        return self._request("POST", f"/v1/fine-tuning/jobs/{job_id}/cancel", _json)

    def job_events(self, job_id: str, after: str | None = None, limit: int = 100) -> Any:
        params = {"limit": limit, **({"after": after} if after else {})}
        return self._request("GET", f"/v1/fine-tuning/jobs/{job_id}/events", _json, params=params)


_DONE = ("succeeded", "failed", "cancelled")


def _headers(api_key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


class Client(_Operations):
    """Blocking client."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 120, **kw: Any):
        self.http = httpx.Client(
            base_url=base_url, headers=_headers(api_key), timeout=timeout, **kw
        )

    def _request(
        self, method: str, path: str, read: Callable[[httpx.Response], Any], **kw: Any
    ) -> Any:
        return read(raise_for_error(self.http.request(method, path, **kw)))

    def _stream(self, path: str, body: dict[str, Any]) -> Iterator[str]:
        # A generator: the request goes out at the first next(), and closes with the iterator.
        with self.http.stream("POST", path, json=body) as response:
            if not response.is_success:
                response.read()
                raise_for_error(response)
            for line in response.iter_lines():
                text = _event_text(line, response.status_code)
                if text is None:
                    return
                if text:
                    yield text
        raise _unfinished(response.status_code)

    def follow(self, job_id: str, poll_s: float = 0.5) -> Iterator[dict[str, Any]]:
        """Each event of a job as it comes, until the job has ended."""
        after = None
        while True:
            page = self.job_events(job_id, after=after)
            for event in page["data"]:
                after = event["id"]
                yield event
            if not page["has_more"]:
                if self.get_job(job_id)["status"] in _DONE:
                    if not self.job_events(job_id, after=after)["data"]:
                        return
                    continue
                time.sleep(poll_s)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Operations):
    """asyncio client: every operation returns a coroutine."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 120, **kw: Any):
        self.http = httpx.AsyncClient(
            base_url=base_url, headers=_headers(api_key), timeout=timeout, **kw
        )

    async def _request(
        self, method: str, path: str, read: Callable[[httpx.Response], Any], **kw: Any
    ) -> Any:
        return read(raise_for_error(await self.http.request(method, path, **kw)))

    async def _stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[str]:
        async with self.http.stream("POST", path, json=body) as response:
            if not response.is_success:
                await response.aread()
                raise_for_error(response)
            async for line in response.aiter_lines():
                text = _event_text(line, response.status_code)
                if text is None:
                    return
                if text:
                    yield text
        raise _unfinished(response.status_code)

    async def follow(self, job_id: str, poll_s: float = 0.5) -> AsyncIterator[dict[str, Any]]:
        after = None
        while True:
            page = await self.job_events(job_id, after=after)
            for event in page["data"]:
                after = event["id"]
                yield event
            if not page["has_more"]:
                if (await self.get_job(job_id))["status"] in _DONE:
                    if not (await self.job_events(job_id, after=after))["data"]:
                        return
                    continue
                await asyncio.sleep(poll_s)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
