"""OpenAI-compatible text generation: /v1/completions, /v1/chat/completions, /v1/models."""

from __future__ import annotations

import time
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from app.adapters.versions import split_ref
from app.api.auth import READ
from app.api.deps import Base, ProjectDep, Registry, SettingsDep, get_traffic
from app.api.deps import Generation as GenerationDep
from app.api.disconnect import unless_disconnected
from app.api.observability import AdapterTraffic
from app.api.schemas import ErrorBody
from app.api.versions import lora_spec, row_versions, versions_of
from app.families.decoder.prompts import prepare
from app.families.decoder.protocol import ChatCompletionRequest, CompletionRequest
from app.families.decoder.serving import Generation
from app.logs import request_id
from app.settings import Settings

router = APIRouter(tags=["generation"])
_ERRORS: dict[int | str, dict[str, Any]] = {
    c: {"model": ErrorBody} for c in (400, 404, 413, 422, 429, 503)
}


async def _version(
    body: ChatCompletionRequest | CompletionRequest,
    base_name: str,
    registry: Registry,
    project: str,
    max_entries: int,
) -> str | None:
    """`model` names an adapter (its current version, or name@version) or the base; our `lora`,
    a composition (its key: app.engine.compositions), with `model` the base."""
    model = body.model
    if body.lora is not None:
        spec = lora_spec(body.lora, model, base_name)
        return (await row_versions(registry, [spec], "lora", project, max_entries))[0]
    if model is None or model == base_name:
        return None
    split_ref(model, "model")
    return (await versions_of(registry, [model], "model", project))[0]


async def _generate(
    request: Request,
    body: ChatCompletionRequest | CompletionRequest,
    base: Base,
    engine: GenerationDep,
    registry: Registry,
    project: str,
    settings: Settings,
) -> Any:
    # Watched from the start: a client gone before its answer begins (even before its prompt
    # is tokenized) costs no prompt and no token; once a stream runs, Starlette watches.
    traffic = await get_traffic(request)  # the one accessor the other routes use too
    answer = _answer(
        body, base, engine, registry, project, settings.max_adapters_per_request, traffic
    )
    return await unless_disconnected(request, answer)


async def _answer(
    body: ChatCompletionRequest | CompletionRequest,
    base: Base,
    engine: GenerationDep,
    registry: Registry,
    project: str,
    max_entries: int,
    traffic: AdapterTraffic,
) -> Response:
    version = await _version(body, base.name, registry, project, max_entries)
    # Templates and tokenizers take seconds on megabytes: never on the event loop.
    prepared = await run_in_threadpool(prepare, body, base, engine, version)
    names = [e.name for e in body.lora] if body.lora else [body.model or ""] if version else []
    generation = Generation(
        prepared, engine, project, request_id.get(),
        lambda usage: traffic.record(project, names, usage["total_tokens"]),
    )  # fmt: skip
    if not body.stream:
        answer = await generation.answer()
        return Response(orjson.dumps(answer), media_type="application/json")
    firsts = await generation.start()  # on any error or cancel, start() frees the sequences
    return StreamingResponse(
        generation.stream(firsts),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.post("/v1/chat/completions", dependencies=READ, responses=_ERRORS)
async def create_chat_completion(
    request: Request,
    body: ChatCompletionRequest,
    base: Base,
    engine: GenerationDep,
    registry: Registry,
    project: ProjectDep,
    settings: SettingsDep,
) -> Any:
    """A chat answer from the base or an adapter; `stream: true` sends server-sent events."""
    return await _generate(request, body, base, engine, registry, project, settings)


@router.post("/v1/completions", dependencies=READ, responses=_ERRORS)
async def create_completion(
    request: Request,
    body: CompletionRequest,
    base: Base,
    engine: GenerationDep,
    registry: Registry,
    project: ProjectDep,
    settings: SettingsDep,
) -> Any:
    """Text after each prompt from the base or an adapter; `stream: true` sends events."""
    return await _generate(request, body, base, engine, registry, project, settings)


@router.get("/v1/models", dependencies=READ)
async def list_models(base: Base, registry: Registry, project: ProjectDep) -> dict[str, Any]:
    """The base and every adapter of the key's project that it can serve, in OpenAI's list shape
    (as vLLM). A broken adapter (one made for another base, whose layers this base lacks, or one
    whose files can no longer be read) would only answer 409: `/v1/adapters` still lists it."""
    records = await run_in_threadpool(registry.list, project)
    now = int(time.time())
    data = [
        {
            "id": base.name,
            "object": "model",
            "created": now,
            "owned_by": "loraserve",
            "parent": None,
        }
    ]
    for r in records:
        if r.status != "ready":
            continue
        created = int(r.created_at)
        data.append(
            {
                "id": r.name,
                "object": "model",
                "created": created,
                "owned_by": project,
                "parent": base.name,
            }
        )
    return {"object": "list", "data": data}
