"""Assemble the app: `create_app(settings)`; `app.main:app` reads settings from the environment."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi_offline import FastAPIOffline
from prometheus_client.core import Metric

from app.api.auth import Authenticate
from app.api.console import install_console
from app.api.deps import Services
from app.api.errors import install_error_handlers
from app.api.limits import SMALL_BODY, BodyGuard, InFlightLimit, route_body_limits
from app.api.observability import Metrics, RequestContext, live_metrics
from app.api.openapi import install_openapi
from app.api.params import reject_unknown_query
from app.api.routes import api_router
from app.engine import (
    Batcher,
    ComputeThread,
    DirectRunner,
    Engine,
    OnBatch,
    Predictor,
    on_passing_thread,
)
from app.generate.engine import GenerationEngine
from app.logs import configure_logging
from app.model import load_base_model, resolve_device
from app.projects import Projects
from app.settings import Settings
from app.startup.openmp import warn_if_unsuited
from app.state.open import base_info, open_state
from app.training import TrainingService

log = logging.getLogger("app")


def build_services(
    settings: Settings,
    compute: ComputeThread,
    on_batch: OnBatch,
    remote: Callable[[], Engine] | None = None,
) -> Services:
    """Load the base model (on a thread that ends with the load), open the shared state, wire
    the engine (`remote`: one that sends predictions elsewhere, as the Ray ingress does)."""
    base = on_passing_thread(
        load_base_model,
        settings.base_model,
        resolve_device(settings.device),
        None,
        settings.data_dir / "models",
        settings.dtype,
    )
    linears = {n: (i.in_features, i.out_features) for n, i in base.linears().items()}
    state = open_state(settings, base, base_info(base))
    registry, datasets, jobs = state.registry, state.datasets, state.jobs
    predictor = Predictor(base, registry, settings.merged_cache_bytes)
    engine: Engine
    if remote is not None:
        engine = remote()
    elif settings.batching:
        engine = Batcher(
            predictor, compute, on_batch,
            settings.max_batch_rows, settings.batch_wait_ms, settings.max_queue_rows,
        )  # fmt: skip
    else:
        engine = DirectRunner(
            predictor, compute, on_batch, settings.max_batch_rows, settings.max_queue_rows
        )
    training = TrainingService(
        base, registry, datasets, jobs, settings.max_rank, settings.max_queued_jobs,
        settings.job_lease_ms,
    )  # fmt: skip
    body_limit = route_body_limits(
        settings.max_upload_bytes,
        settings.max_request_rows,
        settings.max_rank,
        base.input_dim or 0,
        base.output_dim,
        list(linears.values()),
        settings.max_dataset_rows,
        base.text.max_seq_length if base.text is not None else 0,
        base.causal.context_length if base.causal is not None else 0,
    )
    projects = Projects(state.db, settings.registry_ttl_ms)
    generation = None
    if base.causal is not None:
        warn_if_unsuited(decoder=True)
        generation = on_passing_thread(
            GenerationEngine,  # its fused weights and KV cache are written in parallel
            predictor, settings.kv_cache_bytes, settings.max_running_seqs,
            settings.prefill_chunk_tokens, settings.max_waiting_seqs,
            settings.generation_queue_timeout_s, settings.max_seqs_per_request,
            settings.kv_block_tokens, settings.prefix_caching, settings.pack_weights,
        )  # fmt: skip
    return Services(
        settings, base, registry, predictor, compute, engine, datasets, training, body_limit,
        projects, generation,
    )  # fmt: skip


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    start = time.perf_counter()
    # Built before the server listens: a bad BASE_MODEL stops start-up with the reason.
    compute = ComputeThread()
    try:
        services = build_services(
            settings, compute, app.state.metrics.record_batch, app.state.remote_engine
        )
    except BaseException:
        compute.close()
        raise
    services.training.start(settings.embedded_worker)
    services.engine.start()
    if services.generation is not None:
        services.generation.start()
    app.state.services = services
    log.info(
        "ready in %.2fs: base %s on %s in %s, %d adapters",
        time.perf_counter() - start,
        app.state.services.base.name,
        app.state.services.base.device,
        str(app.state.services.base.dtype).removeprefix("torch."),
        app.state.services.registry.count(),
    )
    try:
        yield
    finally:
        app.state.services = None
        services.engine.stop()
        if services.generation is not None:
            services.generation.stop()
        services.compute.close()
        services.training.stop()
        services.registry.db.close()  # the one database of the registry, datasets and jobs


def create_app(
    settings: Settings | None = None,
    remote_engine: Callable[[], Engine] | None = None,
    replica_metrics: Callable[[], Iterator[Metric]] | None = None,
) -> FastAPI:
    """The service; the Ray ingress passes an engine that calls its predictor replicas, and
    their metrics, to be served beside its own."""
    settings = settings or Settings()
    configure_logging()
    app = FastAPIOffline(
        title="loraserve",
        version="0.1.0",
        lifespan=lifespan,
        dependencies=[Depends(reject_unknown_query)],
    )
    app.state.settings = settings
    app.state.services = None
    app.state.metrics = Metrics()
    app.state.metrics.watch(live_metrics(lambda: app.state.services))
    if replica_metrics is not None:
        app.state.metrics.watch(replica_metrics)
    app.state.remote_engine = remote_engine
    install_error_handlers(app)
    install_openapi(app)

    def body_limit(method: str, path: str, content_type: str) -> int:
        services: Services | None = app.state.services
        return SMALL_BODY if services is None else services.body_limit(method, path, content_type)

    # Innermost first. Every guard runs before a route reads its body: a bad key (401), a body
    # over its route's cap (413) or too slow (408), too many requests at once (503).
    app.add_middleware(BodyGuard, limit_for=body_limit, timeout_s=settings.body_timeout_s)
    app.add_middleware(InFlightLimit, max_requests=settings.max_concurrent_requests)
    app.add_middleware(Authenticate, settings=settings)
    # Added last, so outermost: every answer, a 401 or a 500 too, gets an id and a log line.
    app.add_middleware(RequestContext, metrics=app.state.metrics)
    app.include_router(api_router)
    install_console(app)
    return app


app = create_app()
