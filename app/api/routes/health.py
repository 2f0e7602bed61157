"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.schemas import Status
from app.errors import NotReady

router = APIRouter(tags=["health"])


@router.get("/healthz")
def read_health() -> Status:
    """200 while the process lives."""
    return Status(status="ok")


@router.get("/readyz", responses={503: {"description": "not ready"}})
def read_ready(request: Request) -> Status:
    """200 once the base model is loaded and the adapter store scanned."""
    if getattr(request.app.state, "services", None) is None:
        raise NotReady()
    return Status(status="ready")
