"""OpenAI-compatible embeddings for text bases; adapters chosen per request or per input."""

from __future__ import annotations

import base64
import time
from typing import Any

import orjson
from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool

from app.adapters.versions import split_ref
from app.api.auth import READ
from app.api.deps import Base, EngineDep, ProjectDep, Registry, SettingsDep
from app.api.schemas import EmbeddingsRequest, EmbeddingsResponse, ErrorBody
from app.api.versions import versions_of
from app.errors import InvalidInput

router = APIRouter(tags=["embeddings"])
# Lists longer than this are tokenized on a worker thread, so the event loop keeps answering.
_TOKENIZE_INLINE = 64


@router.post(
    "/v1/embeddings",
    responses={c: {"model": ErrorBody} for c in (400, 404, 413, 422, 503)},
    dependencies=READ,
    response_model=EmbeddingsResponse,
)
async def create_embeddings(
    body: EmbeddingsRequest,
    base: Base,
    engine: EngineDep,
    settings: SettingsDep,
    registry: Registry,
    project: ProjectDep,
) -> Response:
    """One embedding per input text; `model` is an adapter's name or the base's."""
    start = time.perf_counter()
    if base.causal is not None:
        raise InvalidInput(
            f"the base model {base.name!r} generates text; use POST /v1/chat/completions or "
            "POST /v1/completions",
            "input",
        )
    if base.text is None:
        raise InvalidInput(
            f"the base model {base.name!r} takes vectors, not texts; use POST /v1/predict", "input"
        )
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not 1 <= len(texts) <= settings.max_request_rows:
        raise InvalidInput(
            f"`input` holds {len(texts)} texts; send 1 <= N <= {settings.max_request_rows}", "input"
        )
    empty = next((i for i, t in enumerate(texts) if not t), None)
    if empty is not None:
        raise InvalidInput(f"input {empty} is an empty string", "input")
    if body.dimensions is not None and body.dimensions != base.output_dim:
        raise InvalidInput(
            f"this model's embeddings have {base.output_dim} dimensions; "
            f"it cannot shorten them to {body.dimensions}",
            "dimensions",
        )
    names, param = _row_adapters(body, base.name, len(texts))
    encoder = base.text
    if len(texts) <= _TOKENIZE_INLINE:
        tokens = encoder.tokenize(texts)
    else:
        tokens = await run_in_threadpool(encoder.tokenize, texts)
    versions = await versions_of(registry, names, param, project)
    result = await engine.submit(tokens, versions, body.mode, param)
    outputs = result.outputs.numpy()
    if body.encoding_format == "base64":
        # As OpenAI sends it: each embedding's float32 bytes, little-endian, base64-encoded.
        rows: list[Any] = [
            base64.b64encode(row.astype("<f4").tobytes()).decode() for row in outputs
        ]
    else:
        rows = list(outputs)  # orjson writes each float32 row in C, exact when read as float32
    used = tokens.tokens
    content = {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": r} for i, r in enumerate(rows)],
        "model": body.model or base.name,
        "usage": {"prompt_tokens": used, "total_tokens": used},
        "mode": result.mode,
    }
    total_ms = (time.perf_counter() - start) * 1000
    timing = (
        f"queue;dur={result.queue_ms:.3f}, model;dur={result.model_ms:.3f}, "
        f"total;dur={total_ms:.3f}"
    )
    body_bytes = orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body_bytes, media_type="application/json", headers={"Server-Timing": timing})


def _row_adapters(body: EmbeddingsRequest, base_name: str, n: int) -> tuple[list[str | None], str]:
    """`model` names one adapter (or the base); our `adapters` extension names one per input."""
    if body.adapters is not None:
        if body.model not in (None, base_name):
            raise InvalidInput(
                f"`adapters` gives an adapter per input; with it, `model` must be the base "
                f"model's name ({base_name!r})",
                "adapters",
            )
        if len(body.adapters) != n:
            raise InvalidInput(
                f"`adapters` has {len(body.adapters)} entries for {n} inputs", "adapters"
            )
        for name in body.adapters:
            if name is not None:
                split_ref(name, "adapters")
        return list(body.adapters), "adapters"
    if body.model is None or body.model == base_name:
        return [None] * n, "model"
    split_ref(body.model, "model")
    return [body.model] * n, "model"
