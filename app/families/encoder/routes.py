"""POST /v1/embeddings over HTTP (OpenAI's shape); the rules are in serving.py."""

from __future__ import annotations

import time

import orjson
from fastapi import APIRouter, Response

from app.api.auth import READ
from app.api.deps import ProjectDep
from app.api.observability import server_timing
from app.api.schemas import ErrorBody
from app.families.encoder.schemas import EmbeddingsRequest, EmbeddingsResponse
from app.families.encoder.serving import EmbeddingsDep

router = APIRouter(tags=["embeddings"])


@router.post(
    "/v1/embeddings",
    responses={c: {"model": ErrorBody} for c in (400, 404, 413, 422, 503)},
    dependencies=READ,
    response_model=EmbeddingsResponse,
)
async def create_embeddings(
    body: EmbeddingsRequest, embeddings: EmbeddingsDep, project: ProjectDep
) -> Response:
    """One embedding per input text; `model` is an adapter's name or the base's."""
    start = time.perf_counter()
    content, result = await embeddings.embed(body, project)
    body_bytes = orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
    headers = server_timing(result, start)
    return Response(body_bytes, media_type="application/json", headers=headers)
