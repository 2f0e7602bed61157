"""The composition root: every long-lived object of a process is built here, and only here.

An API process (`build_services`), a training worker (`build_worker`, also the Ray trainer) and
a predictor replica (`load_family_for`, `open_registry`, `prediction_engine`) take the parts
they need. The base model's family (app.families) supplies what differs between families.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.adapters import AdapterRegistry, BaseInfo, base_info
from app.adapters.legacy import import_folder
from app.api.deps import Services
from app.api.limits import route_body_limits
from app.engine import Batcher, ComputeThread, DirectRunner, Engine, OnBatch, Predictor
from app.engine.compute import on_passing_thread
from app.families import Family, load_family
from app.model import resolve_device
from app.settings import Settings
from app.state.db import Database
from app.state.objects import ObjectStore
from app.state.projects import Projects
from app.training import DatasetStore, TrainingService
from app.training.jobs import JobStore
from app.training.legacy_jobs import import_jobs_db
from app.training.worker import TrainingWorker


@dataclass
class SharedState:
    """What every process opens on the shared database and object store."""

    db: Database
    registry: AdapterRegistry
    datasets: DatasetStore
    jobs: JobStore
    imported: dict[str, Any]  # what this start imported from an older layout


def load_family_for(settings: Settings) -> Family:
    """The base model the settings name, loaded by its family on the configured device."""
    return load_family(
        settings.base_model,
        resolve_device(settings.device),
        None,
        settings.data_dir / "models",
        settings.dtype,
    )


def open_registry(settings: Settings, info: BaseInfo) -> AdapterRegistry:
    """The registry alone, on a migrated database: what a predictor replica needs."""
    db = Database(settings.database)
    db.migrate()
    objects = ObjectStore(settings.store, settings.s3_endpoint_url)
    return AdapterRegistry(
        db, objects, info, settings.max_rank, settings.adapter_cache_bytes,
        settings.max_adapters, settings.registry_ttl_ms,
    )  # fmt: skip


def open_shared(settings: Settings, family: Family) -> SharedState:
    """Migrate the database, then import what an older single-process layout left on disk."""
    registry = open_registry(settings, base_info(family.base))
    db = registry.db
    datasets = family.dataset_store(db, registry.objects, settings.max_dataset_rows)
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


def prediction_engine(
    settings: Settings, predictor: Predictor, compute: ComputeThread, on_batch: OnBatch
) -> Engine:
    """Batches across requests (BATCHING, the default), or runs each request alone."""
    if settings.batching:
        return Batcher(
            predictor, compute, on_batch,
            settings.max_batch_rows, settings.batch_wait_ms, settings.max_queue_rows,
        )  # fmt: skip
    return DirectRunner(
        predictor, compute, on_batch, settings.max_batch_rows, settings.max_queue_rows
    )


def build_services(
    settings: Settings,
    compute: ComputeThread,
    on_batch: OnBatch,
    remote: Callable[[], Engine] | None = None,
) -> Services:
    """An API process: the base (loaded on a thread that ends with the load), the shared state,
    the engines (`remote`: one that sends predictions elsewhere, as the Ray ingress does)."""
    family = on_passing_thread(load_family_for, settings)
    base = family.base
    state = open_shared(settings, family)
    predictor = Predictor(base, state.registry, settings.merged_cache_bytes)
    engine = (
        remote()
        if remote is not None
        else prediction_engine(settings, predictor, compute, on_batch)
    )
    training = TrainingService(
        family, state.registry, state.datasets, state.jobs, settings.max_rank,
        settings.max_queued_jobs, settings.job_lease_ms,
    )  # fmt: skip
    facts = family.facts
    body_limit = route_body_limits(
        settings.max_upload_bytes,
        settings.max_request_rows,
        settings.max_rank,
        base.input_dim or 0,
        base.output_dim,
        [(i.in_features, i.out_features) for i in base.linears().values()],
        settings.max_dataset_rows,
        facts.max_seq_length or 0,
        facts.context_length or 0,
    )
    # Its fused weights and KV cache are written in parallel: on a thread that ends with it.
    generation = on_passing_thread(family.generation, predictor, settings)
    return Services(
        settings, family, state.registry, predictor, compute, engine, state.datasets, training,
        body_limit, Projects(state.db, settings.registry_ttl_ms), generation,
    )  # fmt: skip


def build_worker(settings: Settings) -> tuple[TrainingWorker, SharedState]:
    """A training worker of its own (`loraserve worker`, the Ray trainer) and the state it is on."""
    family = load_family_for(settings)
    state = open_shared(settings, family)
    worker = TrainingWorker(
        family, state.registry, state.datasets, state.jobs, settings.job_lease_ms
    )
    return worker, state
