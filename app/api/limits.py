"""Guards that run before a route reads its body: size per route, read time, requests in flight."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import error_response

KiB = 1024
# A request body on a route that takes none (GET, DELETE, cancel) is never read; this is its cap.
SMALL_BODY = 64 * KiB
# Routes whose answers must not wait behind a full server.
_ALWAYS_ANSWERED = frozenset({"/healthz", "/readyz"})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


class BodyGuard:
    """413 for a body over what its route can use, 408 for one that arrives too slowly.

    `limit_for(method, path, content_type)` gives the route's cap in bytes. A declared
    Content-Length over it is refused before a byte is read (and before the auth check, if the
    key is wrong: RequestContext's neighbours answer 401 first); a chunked body is cut off as it
    streams in. The whole body must arrive within `timeout_s` of the request's start; after its
    last part, `receive()` is the app's wait for a disconnect (a streamed answer listens for one
    as long as it runs), so the deadline no longer applies.
    """

    def __init__(
        self, app: ASGIApp, limit_for: Callable[[str, str, str], int], timeout_s: float
    ) -> None:
        self.app = app
        self.limit_for = limit_for
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        content_type = ""
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value.decode("latin-1")
        max_bytes = self.limit_for(scope["method"], scope["path"], content_type)
        length = _content_length(scope)
        if length is not None and length > max_bytes:
            response = error_response(413, "payload_too_large", _too_large(max_bytes))
            await response(scope, receive, send)
            return
        seen = 0
        complete = False
        deadline = time.monotonic() + self.timeout_s

        async def guarded_receive() -> Message:
            nonlocal seen, complete
            if complete:
                return await receive()
            try:
                async with asyncio.timeout(deadline - time.monotonic()):
                    message = await receive()
            except TimeoutError as exc:
                # An HTTPException, so FastAPI's own body reading passes it through unchanged.
                late = f"the body did not arrive within {self.timeout_s:g} s"
                raise HTTPException(408, late) from exc
            seen += len(message.get("body", b""))
            if seen > max_bytes:
                raise HTTPException(413, _too_large(max_bytes))
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, guarded_receive, send)


def _too_large(max_bytes: int) -> str:
    return f"request body is over this route's limit of {max_bytes} bytes"


class InFlightLimit:
    """503 with Retry-After once `max_requests` are being handled; health checks always pass."""

    def __init__(self, app: ASGIApp, max_requests: int) -> None:
        self.app = app
        self.max_requests = max_requests
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _ALWAYS_ANSWERED:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_requests:
            response = error_response(
                503,
                "overloaded",
                f"{self.max_requests} requests are already being handled; retry shortly",
                error_type="server_error",
                headers={"Retry-After": "1"},
            )
            await response(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


def route_body_limits(
    max_upload_bytes: int,
    max_request_rows: int,
    max_rank: int,
    input_dim: int,
    output_dim: int,
    linears: list[tuple[int, int]],
    max_dataset_rows: int,
    max_seq_length: int = 0,
    context_length: int = 0,
) -> Callable[[str, str, str], int]:
    """The most bytes each route can use, from the base model's shape and the settings.

    A predict body cannot need more than MAX_REQUEST_ROWS rows of the base's width; an adapter
    cannot need more than rank MAX_RANK on every layer in fp32. MAX_UPLOAD_BYTES caps them all.
    """
    # A JSON number as a client may write it ("-1.2345678901234567e-100, ") plus room to spare.
    json_number = 32
    per_row_extra = 80  # brackets, and a per-row adapter name in `adapters`
    predict_json = max_request_rows * (input_dim * json_number + per_row_extra) + SMALL_BODY
    predict_binary = max_request_rows * (input_dim * 4 + per_row_extra) + SMALL_BODY
    adapter_weights = sum(max_rank * (n_in + n_out) * 4 + 512 for n_in, n_out in linears)
    adapter_upload = adapter_weights + 3 * SMALL_BODY  # + header, config and multipart framing
    # Texts: generous room per token (long words, JSON escapes); longer texts are truncated anyway.
    embeddings_json = max_request_rows * (max_seq_length * 48 + per_row_extra) + SMALL_BODY
    dataset_json = min(max_dataset_rows * (input_dim + output_dim) * json_number, JSON_DATASET)
    # Prompts: room per token as for embeddings, for two prompts of the whole context (a batch
    # of longer prompts goes in several requests). Megabytes would only be refused later, after
    # the parser and the tokenizer spent seconds on them.
    generation_json = 2 * context_length * 48 + SMALL_BODY
    caps = {
        ("POST", "/v1/completions", "json"): generation_json,
        ("POST", "/v1/chat/completions", "json"): generation_json,
        ("POST", "/v1/predict", "json"): predict_json,
        ("POST", "/v1/predict", "binary"): predict_binary,
        ("POST", "/v1/adapters", "any"): adapter_upload,
        ("POST", "/v1/embeddings", "json"): embeddings_json,
        ("POST", "/v1/datasets", "json"): dataset_json + SMALL_BODY,
        ("POST", "/v1/datasets", "any"): max_upload_bytes,
    }

    def limit_for(method: str, path: str, content_type: str) -> int:
        kind = "json" if content_type.startswith("application/json") else "binary"
        cap = caps.get((method, path, kind)) or caps.get((method, path, "any")) or SMALL_BODY
        return min(cap, max_upload_bytes)

    return limit_for


# JSON is for small datasets: parsed into Python floats it takes ~10x its size in memory.
JSON_DATASET = 32 * 1024 * KiB
