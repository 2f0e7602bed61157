"""Open the shared state a process works on: the same for API processes and workers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.adapters import AdapterRegistry, BaseInfo
from app.adapters.legacy import import_folder
from app.model import BaseModel, load_base_model, resolve_device
from app.settings import Settings
from app.state.db import Database
from app.state.objects import ObjectStore
from app.training.chats import ChatDatasetStore
from app.training.datasets import DatasetStore
from app.training.jobs import JobStore
from app.training.legacy_jobs import import_jobs_db
from app.training.pairs import PairDatasetStore


@dataclass
class SharedState:
    db: Database
    registry: AdapterRegistry
    datasets: DatasetStore
    jobs: JobStore
    imported: dict[str, Any]  # what this start imported from an older layout


def open_state(settings: Settings, base: BaseModel, info: BaseInfo) -> SharedState:
    """Migrate the database, then import what an older single-process layout left on disk."""
    registry = open_registry(settings, info)
    db, objects = registry.db, registry.objects
    datasets: DatasetStore
    if base.causal is not None:
        datasets = ChatDatasetStore(db, objects, settings.max_dataset_rows, base.causal)
    elif base.text is not None:
        datasets = PairDatasetStore(db, objects, settings.max_dataset_rows)
    else:
        datasets = DatasetStore(
            db, objects, base.input_dim or 0, base.output_dim, settings.max_dataset_rows
        )
    adapters = import_folder(registry, settings.adapters_dir)
    imported_datasets = datasets.import_folder(settings.data_dir / "datasets")
    jobs = JobStore(db)
    imported: dict[str, Any] = {
        "adapters": adapters.imported,
        "adapters_already_there": adapters.unchanged,
        "adapters_refused": adapters.refused,
        "datasets": imported_datasets,
        "jobs": import_jobs_db(jobs, settings.data_dir / "jobs.db"),
    }
    return SharedState(db, registry, datasets, jobs, imported)


def open_registry(settings: Settings, info: BaseInfo) -> AdapterRegistry:
    """The registry alone, on a migrated database: what a predictor replica needs."""
    db = Database(settings.database)
    db.migrate()
    objects = ObjectStore(settings.store, settings.s3_endpoint_url)
    return AdapterRegistry(
        db, objects, info, settings.max_rank, settings.adapter_cache_bytes,
        settings.max_adapters, settings.registry_ttl_ms,
    )  # fmt: skip


def load_base(settings: Settings) -> tuple[BaseModel, BaseInfo]:
    """The base model, and what the registry needs to know of it."""
    base = load_base_model(
        settings.base_model,
        resolve_device(settings.device),
        None,
        settings.data_dir / "models",
        settings.dtype,
    )
    return base, base_info(base)


def base_info(base: BaseModel) -> BaseInfo:
    linears = {n: (i.in_features, i.out_features) for n, i in base.linears().items()}
    return BaseInfo(
        linears, base.name, base.fingerprint, base.device, base.dtype, base.conv1d, base.frozen
    )
