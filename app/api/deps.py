"""Typed dependencies: routes reach the long-lived objects on app.state through these.

They are `async def` on purpose: FastAPI runs a plain `def` dependency on a worker thread, a
thread hop per dependency per request, which showed up as 13% of the event loop under load
(bench/profile_serve.py --gil).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from app.adapters import AdapterRegistry
from app.api.observability import AdapterTraffic
from app.engine import ComputeThread, Engine, Predictor
from app.errors import InvalidInput, NotReady
from app.families.decoder.generate.engine import GenerationEngine
from app.families.family import Family
from app.model import BaseModel
from app.settings import Settings
from app.state.projects import Projects
from app.state.tables import DEFAULT_PROJECT
from app.training import DatasetStore, TrainingService


@dataclass
class Services:
    """Everything the lifespan builds once."""

    settings: Settings
    family: Family  # the base model and what its family does differently
    registry: AdapterRegistry
    predictor: Predictor
    compute: ComputeThread  # runs all model work (app/engine/compute.py)
    engine: Engine
    datasets: DatasetStore
    training: TrainingService
    body_limit: Callable[[str, str, str], int]  # (method, path, content type) -> most bytes
    projects: Projects
    generation: GenerationEngine | None = None  # decoder bases only

    @property
    def base(self) -> BaseModel:
        return self.family.base


async def get_services(request: Request) -> Services:
    services = getattr(request.app.state, "services", None)
    if services is None:
        raise NotReady()
    return services


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_base(services: Annotated[Services, Depends(get_services)]) -> BaseModel:
    return services.base


async def get_family(services: Annotated[Services, Depends(get_services)]) -> Family:
    return services.family


async def get_registry(services: Annotated[Services, Depends(get_services)]) -> AdapterRegistry:
    return services.registry


async def get_predictor(services: Annotated[Services, Depends(get_services)]) -> Predictor:
    return services.predictor


async def get_engine(services: Annotated[Services, Depends(get_services)]) -> Engine:
    return services.engine


async def get_generation(services: Annotated[Services, Depends(get_services)]) -> GenerationEngine:
    """The generation engine; a 422 naming the right endpoint on a base that does not generate."""
    if services.generation is None:
        family = services.family
        raise InvalidInput(
            f"the base model {family.base.name!r} ({family.name}) does not generate "
            f"text; use {family.endpoint}",
            "model",
        )
    return services.generation


async def get_datasets(services: Annotated[Services, Depends(get_services)]) -> DatasetStore:
    return services.datasets


async def get_training(services: Annotated[Services, Depends(get_services)]) -> TrainingService:
    return services.training


async def get_projects(services: Annotated[Services, Depends(get_services)]) -> Projects:
    return services.projects


async def get_traffic(request: Request) -> AdapterTraffic:
    """Requests and tokens per adapter, for /metrics."""
    traffic: AdapterTraffic = request.app.state.metrics.adapters
    return traffic


async def get_project(request: Request) -> str:
    """The project of the request's key (Authenticate puts it in the scope); else the default."""
    project: str = request.scope.get("state", {}).get("project", DEFAULT_PROJECT)
    return project


SettingsDep = Annotated[Settings, Depends(get_settings)]
Base = Annotated[BaseModel, Depends(get_base)]
FamilyDep = Annotated[Family, Depends(get_family)]
Registry = Annotated[AdapterRegistry, Depends(get_registry)]
PredictorDep = Annotated[Predictor, Depends(get_predictor)]
Datasets = Annotated[DatasetStore, Depends(get_datasets)]
Training = Annotated[TrainingService, Depends(get_training)]
EngineDep = Annotated[Engine, Depends(get_engine)]
Generation = Annotated[GenerationEngine, Depends(get_generation)]
ProjectDep = Annotated[str, Depends(get_project)]
TrafficDep = Annotated[AdapterTraffic, Depends(get_traffic)]
ProjectsDep = Annotated[Projects, Depends(get_projects)]
