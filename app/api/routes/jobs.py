"""Fine-tuning jobs, shaped like OpenAI's: create, list, read, cancel, events."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool

from app.api.auth import ADMIN
from app.api.deps import ProjectDep, Training
from app.api.schemas import (
    ErrorBody,
    EventList,
    EventPublic,
    JobCreate,
    JobError,
    JobList,
    JobProgress,
    JobPublic,
    ResolvedHyperparameters,
)
from app.training import Job

router = APIRouter(prefix="/v1/fine-tuning/jobs", tags=["fine-tuning"], dependencies=ADMIN)
_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody} for code in (400, 404, 409, 422)
}
Limit = Annotated[int, Query(ge=1, le=1000)]


def _public(job: Job) -> JobPublic:
    return JobPublic(
        id=job.id,
        status=job.status,
        adapter_name=job.adapter_name,
        training_dataset=job.training_dataset,
        validation_dataset=job.validation_dataset,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        hyperparameters=ResolvedHyperparameters(**job.hyperparameters),
        progress=JobProgress(**job.progress),
        error=JobError(**job.error) if job.error else None,
    )


@router.post(
    "",
    status_code=201,
    responses={**_ERRORS, 413: {"model": ErrorBody}, 429: {"model": ErrorBody}},
)
async def create_job(body: JobCreate, training: Training, project: ProjectDep) -> JobPublic:
    """Queue a job; everything checkable is checked first (422, 404, 409), nothing queued then."""
    job = await run_in_threadpool(
        training.create_job,
        body.adapter_name,
        body.training_dataset,
        body.validation_dataset,
        body.hyperparameters,
        project,
    )
    return _public(job)


@router.get("", responses=_ERRORS)
def list_jobs(
    training: Training, project: ProjectDep, after: str | None = None, limit: Limit = 20
) -> JobList:
    """Newest first; pass the last id as `after` for the next page (422 `invalid_cursor` for an
    `after` that names no job)."""
    jobs, has_more = training.jobs.page(after, limit, project, "fine_tuning")
    return JobList(data=[_public(j) for j in jobs], has_more=has_more)


@router.get("/{job_id}", responses=_ERRORS)
def read_job(job_id: str, training: Training, project: ProjectDep) -> JobPublic:
    return _public(training.jobs.get(job_id, project, "fine_tuning"))


@router.post("/{job_id}/cancel", responses=_ERRORS)
def cancel_job(job_id: str, training: Training, project: ProjectDep) -> JobPublic:
    """Queued: cancelled at once. Running: `cancelling`, then `cancelled` after the current step."""
    return _public(training.cancel(job_id, project, "fine_tuning"))


@router.get("/{job_id}/events", responses=_ERRORS)
def list_job_events(
    job_id: str,
    training: Training,
    project: ProjectDep,
    after: str | None = None,
    limit: Limit = 100,
) -> EventList:
    """Oldest first; pass the last event id as `after` to follow a job (422 `invalid_cursor` for
    an `after` that names no event of this job)."""
    events, has_more = training.jobs.events(job_id, after, limit, project, "fine_tuning")
    return EventList(data=[EventPublic(**asdict(e)) for e in events], has_more=has_more)
