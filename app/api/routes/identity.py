"""Who the caller is: what its key may do, so a client (the console) can offer only that."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.auth import READ, Role
from app.api.deps import ProjectDep
from app.api.schemas import Identity

router = APIRouter(tags=["auth"])


@router.get("/v1/me", dependencies=READ)
async def read_identity(request: Request, project: ProjectDep) -> Identity:
    """The role of the key sent and its project. With auth off every caller may do everything,
    so the role is `super`."""
    enabled: bool = request.app.state.settings.auth_enabled
    # With auth on, Authenticate has set the role before any route runs (this path is not public).
    role: Role = request.state.role if enabled else "super"
    return Identity(role=role, project=project, auth_enabled=enabled)
