"""The HTTP app: `create_app(settings)`; `app.main:app` reads settings from the environment.

Its objects are built by the composition root (app.services) when the lifespan starts.
"""

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
from app.api.limits import SMALL_BODY, BodyGuard, InFlightLimit
from app.api.observability import Metrics, RequestContext, live_metrics
from app.api.openapi import install_openapi
from app.api.params import reject_unknown_query
from app.api.routes import AFTER_FAMILIES, BEFORE_FAMILIES
from app.engine import ComputeThread, Engine
from app.families.routes import ROUTERS
from app.logs import configure_logging
from app.services import build_services
from app.settings import Settings

log = logging.getLogger("app")


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
    for router in (*BEFORE_FAMILIES, *ROUTERS, *AFTER_FAMILIES):
        app.include_router(router)
    install_console(app)
    return app


app = create_app()
