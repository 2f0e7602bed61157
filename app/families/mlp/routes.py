"""POST /v1/predict over HTTP: JSON or safetensors both ways; the rules are in serving.py."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from app.api.auth import READ
from app.api.deps import ProjectDep
from app.api.observability import server_timing
from app.api.schemas import ErrorBody
from app.engine import Mode
from app.families.mlp.io import OCTET, encode
from app.families.mlp.schemas import PredictRequest, PredictResponse
from app.families.mlp.serving import PredictionsDep

router = APIRouter(tags=["predict"])
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
    predictions: PredictionsDep,
    project: ProjectDep,
    adapter: Annotated[str | None, Query(description="binary bodies: one adapter")] = None,
    mode: Annotated[Mode, Query(description="binary bodies: the mode")] = "auto",
) -> Response:
    """Rows in, rows out; every answer carries Server-Timing (queue, model, total)."""
    start = time.perf_counter()
    query = request.query_params if request.scope.get("query_string") else {}
    content_type = request.headers.get("content-type", "application/json")
    parse = predictions.parser(content_type, query, adapter, mode)
    result = await predictions.predict(await request.body(), parse, project)
    binary = OCTET in request.headers.get("accept", "")
    return encode(result.outputs, result.mode, binary, server_timing(result, start))
