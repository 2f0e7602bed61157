"""Predictions, each row with its own adapter or none; JSON or safetensors both ways."""

from __future__ import annotations

import time
from functools import partial
from typing import Annotated

import torch
from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from app.api.auth import READ
from app.api.deps import Base, EngineDep, ProjectDep, Registry, SettingsDep
from app.api.params import UnknownParameter
from app.api.predict_io import OCTET, encode, parse_json, parse_safetensors
from app.api.schemas import ErrorBody, PredictRequest, PredictResponse
from app.api.versions import versions_of
from app.engine import Mode
from app.engine.inputs import check_rows, first_non_finite_rows, row_adapters
from app.errors import InvalidInput, UnsupportedMediaType, shorten

router = APIRouter(tags=["predict"])
# Bodies bigger than this are parsed on a worker thread, so the event loop keeps answering.
_PARSE_INLINE_BYTES = 256 * 1024
_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": PredictRequest.model_json_schema()},
            OCTET: {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": "safetensors with tensor `inputs`; per-row adapters as the "
                    "metadata entry `adapters` (a JSON list of names or nulls)",
                }
            },
        },
    },
    "responses": {
        "200": {
            "description": "outputs",
            "content": {
                "application/json": {"schema": PredictResponse.model_json_schema()},
                OCTET: {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
}


@router.post(
    "/v1/predict",
    responses={c: {"model": ErrorBody} for c in (400, 404, 413, 415, 422, 503)},
    openapi_extra=_DOC,
    dependencies=READ,
)
async def predict(
    request: Request,
    base: Base,
    engine: EngineDep,
    settings: SettingsDep,
    registry: Registry,
    project: ProjectDep,
    adapter: Annotated[str | None, Query(description="binary bodies: one adapter")] = None,
    mode: Annotated[Mode, Query(description="binary bodies: the mode")] = "auto",
) -> Response:
    """Rows in, rows out; every answer carries Server-Timing (queue, model, total)."""
    start = time.perf_counter()
    input_dim = base.input_dim
    if base.causal is not None:
        raise InvalidInput(
            f"the base model {base.name!r} generates text; use POST /v1/chat/completions or "
            "POST /v1/completions",
            "inputs",
        )
    if input_dim is None:
        raise InvalidInput(
            f"the base model {base.name!r} takes texts, not vectors; use POST /v1/embeddings",
            "inputs",
        )
    content_type = request.headers.get("content-type", "application/json")
    if content_type.startswith(OCTET):
        parse = partial(parse_safetensors, adapter=adapter, mode=mode)
    elif content_type.startswith("application/json"):
        for name in ("adapter", "mode") if request.scope.get("query_string") else ():
            if name in request.query_params:
                raise UnknownParameter(
                    f"query parameter {name!r} is for {OCTET} bodies; "
                    f"with JSON, put `{name}` in the body",
                    name,
                )
        parse = partial(parse_json, input_dim=input_dim, max_rows=settings.max_request_rows)
    else:
        raise UnsupportedMediaType(f"send application/json or {OCTET}, not {content_type}")
    raw = await request.body()
    call = parse(raw) if len(raw) <= _PARSE_INLINE_BYTES else await run_in_threadpool(parse, raw)
    x = check_rows(call.x, input_dim, settings.max_request_rows)
    names, param = row_adapters(call.adapter, call.adapters, len(x))
    versions = await versions_of(registry, names, param, project)
    result = await engine.submit(x, versions, call.mode, param)
    _check_finite(result.outputs)
    total_ms = (time.perf_counter() - start) * 1000
    timing = (
        f"queue;dur={result.queue_ms:.3f}, model;dur={result.model_ms:.3f}, "
        f"total;dur={total_ms:.3f}"
    )
    binary = OCTET in request.headers.get("accept", "")
    return encode(result.outputs, result.mode, binary, {"Server-Timing": timing})


def _check_finite(outputs: torch.Tensor) -> None:
    """An answer never carries inf or NaN: inputs this large overflow the model in float32."""
    rows = first_non_finite_rows(outputs)
    if rows:
        raise InvalidInput(
            f"the outputs of rows {shorten(rows)} overflow float32 with this model and adapter; "
            "scale the inputs down",
            "inputs",
        )
