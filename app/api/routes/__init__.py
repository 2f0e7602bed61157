"""The shared HTTP routes, one router per feature; each family adds its own (app.families.routes)."""

from fastapi import APIRouter

from app.api.routes import adapters, compose, datasets, health, identity, jobs, model, projects

# In the order the OpenAPI document lists them; the families' routes go after `adapters`.
BEFORE_FAMILIES: tuple[APIRouter, ...] = tuple(
    m.router for m in (health, identity, model, adapters, compose)
)
AFTER_FAMILIES: tuple[APIRouter, ...] = tuple(m.router for m in (datasets, jobs, projects))

__all__ = ["AFTER_FAMILIES", "BEFORE_FAMILIES"]
