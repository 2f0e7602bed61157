"""The HTTP routes, one router per feature."""

from fastapi import APIRouter

from app.api.routes import (
    adapters,
    datasets,
    embeddings,
    health,
    jobs,
    model,
    predict,
    projects,
)

api_router = APIRouter()
for module in (health, model, adapters, predict, embeddings, datasets, jobs, projects):
    api_router.include_router(module.router)

__all__ = ["api_router"]
