"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.auth import READ
from app.api.schemas import Status
from app.errors import NotReady

router = APIRouter(tags=["health"])


# Probes are `async def`: a plain `def` route runs on a worker thread, a hop per probe.
@router.get("/healthz")
async def read_health() -> Status:
    """200 while the process lives."""
    return Status(status="ok")


@router.get("/readyz", responses={503: {"description": "not ready"}})
async def read_ready(request: Request) -> Status:
    """200 once the base model is loaded and the adapter store scanned."""
    if getattr(request.app.state, "services", None) is None:
        raise NotReady()
    return Status(status="ready")


@router.get(
    "/metrics",
    dependencies=READ,
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
def read_metrics(request: Request) -> Response:
    """Prometheus text: requests, latency, batches, queue, adapter cache, jobs."""
    return Response(
        generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST
    )
