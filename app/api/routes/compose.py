"""POST /v1/adapters/compose: several adapters saved as one new adapter, as PEFT's
add_weighted_adapter combines them (app.adapters.composition)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from app.adapters.composition import Composition, save_composition
from app.api.auth import ADMIN
from app.api.deps import PredictorDep, ProjectDep, Registry, SettingsDep
from app.api.routes.adapters import StrictQueryBool, adapter_public
from app.api.schemas import AdapterPublic, ErrorBody, LoraEntry
from app.errors import InvalidInput

router = APIRouter(prefix="/v1/adapters", tags=["adapters"])


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


@router.post(
    "/compose",
    status_code=201,
    responses={c: {"model": ErrorBody} for c in (404, 409, 413, 422, 503)},
    dependencies=ADMIN,
)
async def compose_adapter(
    body: ComposeRequest,
    registry: Registry,
    predictor: PredictorDep,
    settings: SettingsDep,
    project: ProjectDep,
    overwrite: Annotated[
        StrictQueryBool, Query(description="true replaces an adapter of that name")
    ] = False,
) -> AdapterPublic:
    """A new adapter from weighted sources, as PEFT's `add_weighted_adapter` makes it."""
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
    record = await run_in_threadpool(save_composition, registry, request, overwrite, project)
    return await run_in_threadpool(adapter_public, record, registry, predictor)
