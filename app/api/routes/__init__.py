"""The HTTP routes, one router per feature."""

from fastapi import APIRouter

from app.api.routes import (
    adapters,
    completions,
    datasets,
    embeddings,
    health,
    identity,
    jobs,
    model,
    predict,
    projects,
)

api_router = APIRouter()
for module in (
    health,
    identity,
    model,
    adapters,
    predict,
    embeddings,
    completions,
    datasets,
    jobs,
    projects,
):
    api_router.include_router(module.router)

__all__ = ["api_router"]
