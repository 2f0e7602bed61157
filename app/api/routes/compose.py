"""POST /v1/adapters/compose: several adapters saved as one new adapter, as PEFT's
add_weighted_adapter combines them (app.adapters.composition). A small composition is made
during the request (201, the adapter); one that costs more than COMPOSE_INLINE_MAX_FLOPS (the
svd methods on a large base) is queued as a job that a training worker runs (202, the job, to
follow at /v1/adapters/compose/jobs/{id})."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from app.adapters.composition import Composition, Planned, plan, write
from app.api.auth import ADMIN
from app.api.deps import PredictorDep, ProjectDep, Registry, SettingsDep, Training
from app.api.routes.adapters import StrictQueryBool, adapter_public
from app.api.schemas import AdapterPublic, ErrorBody, JobError, JobState, LoraEntry
from app.errors import InvalidInput
from app.training import Job

router = APIRouter(prefix="/v1/adapters", tags=["adapters"])
_ERRORS: dict[int | str, dict[str, object]] = {c: {"model": ErrorBody} for c in (404, 409, 422)}


class ComposeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(description="the new adapter's name")
    sources: list[LoraEntry] = Field(min_length=1)
    method: Literal["cat", "linear", "svd", "ties_svd", "dare_ties_svd"] = Field(
        description="cat: exact (the ranks add up); linear: weighted sums of A and B (one rank); "
        "the svd methods: the weighted update cut back to `rank` (ties: pruned to `density` and "
        "sign-elected; dare_ties: pruned at random first)"
    )
    rank: int | None = Field(default=None, ge=1, description="svd methods: default the largest")
    density: float | None = Field(
        default=None, gt=0, le=1, allow_inf_nan=False, description="ties_svd, dare_ties_svd"
    )
    seed: int = Field(default=0, ge=0, le=2**63 - 1, description="dare_ties_svd's masks")


class ComposedSource(BaseModel):
    name: str
    version: str
    scale: float


class CompositionJob(BaseModel):
    id: str
    object: Literal["composition.job"] = "composition.job"
    status: JobState
    adapter_name: str
    sources: list[ComposedSource] = Field(description="as resolved when the job was queued")
    method: str
    rank: int | None
    density: float | None
    seed: int
    created_at: int
    started_at: int | None
    finished_at: int | None
    error: JobError | None


def _job_public(job: Job) -> CompositionJob:
    planned = Planned.from_json(job.hyperparameters)
    return CompositionJob(
        id=job.id, status=job.status, adapter_name=job.adapter_name,
        sources=[ComposedSource(name=n, version=v, scale=s) for n, v, s in planned.sources],
        method=planned.method, rank=planned.rank, density=planned.density, seed=planned.seed,
        created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
        error=JobError(**job.error) if job.error else None,
    )  # fmt: skip


@router.post(
    "/compose",
    status_code=201,
    responses={
        **{c: {"model": ErrorBody} for c in (404, 409, 413, 422, 429, 503)},
        202: {"model": CompositionJob, "description": "a large composition, queued as a job"},
    },
    dependencies=ADMIN,
)
async def compose_adapter(
    body: ComposeRequest,
    response: Response,
    registry: Registry,
    predictor: PredictorDep,
    training: Training,
    settings: SettingsDep,
    project: ProjectDep,
    overwrite: Annotated[
        StrictQueryBool, Query(description="true replaces an adapter of that name")
    ] = False,
) -> AdapterPublic | CompositionJob:
    """A new adapter from weighted sources, as PEFT's `add_weighted_adapter` makes it: 201 and
    the adapter, or, for a composition costing more than COMPOSE_INLINE_MAX_FLOPS, 202 and the
    job that makes it."""
    if len(body.sources) > settings.max_adapters_per_request:
        raise InvalidInput(
            f"{len(body.sources)} sources; a composition takes at most "
            f"{settings.max_adapters_per_request}",
            "sources",
        )
    request = Composition(
        body.name, [(s.name, s.scale) for s in body.sources], body.method, body.rank,
        body.density, body.seed,
    )  # fmt: skip
    planned = await run_in_threadpool(plan, registry, request, overwrite, project)
    if planned.flops > settings.compose_inline_max_flops:
        job = await run_in_threadpool(training.create_composition_job, planned)
        response.status_code = 202
        response.headers["Location"] = f"/v1/adapters/compose/jobs/{job.id}"
        return _job_public(job)
    record = await run_in_threadpool(write, registry, planned)
    return await run_in_threadpool(adapter_public, record, registry, predictor)


@router.get("/compose/jobs/{job_id}", responses=_ERRORS, dependencies=ADMIN)
def read_composition_job(job_id: str, training: Training, project: ProjectDep) -> CompositionJob:
    """A composition job: `succeeded` once its adapter is registered."""
    return _job_public(training.jobs.get(job_id, project, "composition"))


@router.post("/compose/jobs/{job_id}/cancel", responses=_ERRORS, dependencies=ADMIN)
def cancel_composition_job(job_id: str, training: Training, project: ProjectDep) -> CompositionJob:
    """Queued: cancelled at once. Running: `cancelling`, then `cancelled` (nothing registered)."""
    return _job_public(training.cancel(job_id, project, "composition"))
