"""Projects (tenants) and their keys; a super-admin key only."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool

from app.api.auth import SUPER
from app.api.deps import ProjectsDep
from app.api.schemas import (
    ErrorBody,
    KeyCreate,
    KeyCreated,
    KeyList,
    KeyPublic,
    ProjectCreate,
    ProjectList,
    ProjectPublic,
)

router = APIRouter(prefix="/v1/projects", tags=["projects"], dependencies=SUPER)
_ERRORS: dict[int | str, dict[str, object]] = {c: {"model": ErrorBody} for c in (404, 409, 422)}


@router.post("", status_code=201, responses=_ERRORS)
async def create_project(body: ProjectCreate, projects: ProjectsDep) -> ProjectPublic:
    project = await run_in_threadpool(
        projects.create, body.name, body.max_adapters, body.max_queued_jobs, body.max_stored_bytes
    )
    return ProjectPublic(**asdict(project))


@router.get("")
async def list_projects(projects: ProjectsDep) -> ProjectList:
    found = await run_in_threadpool(projects.all)
    return ProjectList(data=[ProjectPublic(**asdict(p)) for p in found])


@router.get("/{project_id}", responses=_ERRORS)
async def read_project(project_id: str, projects: ProjectsDep) -> ProjectPublic:
    return ProjectPublic(**asdict(await run_in_threadpool(projects.get, project_id)))


@router.post("/{project_id}/keys", status_code=201, responses=_ERRORS)
async def create_key(project_id: str, body: KeyCreate, projects: ProjectsDep) -> KeyCreated:
    """A new key of the project; the answer holds the key itself, and no later one does."""
    key, secret = await run_in_threadpool(projects.create_key, project_id, body.role, body.label)
    return KeyCreated(**asdict(key), key=secret)


@router.get("/{project_id}/keys", responses=_ERRORS)
async def list_keys(project_id: str, projects: ProjectsDep) -> KeyList:
    keys = await run_in_threadpool(projects.keys, project_id)
    return KeyList(data=[KeyPublic(**asdict(k)) for k in keys])


@router.delete(
    "/{project_id}/keys/{key_id}", status_code=204, responses=_ERRORS, response_class=Response
)
async def revoke_key(project_id: str, key_id: str, projects: ProjectsDep) -> Response:
    """The key stops working at once here, and on other replicas within REGISTRY_TTL_MS."""
    await run_in_threadpool(projects.revoke, project_id, key_id)
    return Response(status_code=204)
