"""The HTTP routes, one router per feature."""

from fastapi import APIRouter

from app.api.routes import adapters, health, model, predict

api_router = APIRouter()
for module in (health, model, adapters, predict):
    api_router.include_router(module.router)

__all__ = ["api_router"]
