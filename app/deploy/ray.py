"""The service on Ray Serve: many machines behind one HTTP port, with no router of our own.

- `Ingress`: our FastAPI app, every route as in one process (auth, validation, name ->
  version, the registry, datasets, jobs); it sends predictions to the predictors.
- `Predictor`: the base model once per replica (on its GPU when it has one) with the batching
  engine inside; `@serve.multiplexed` keyed by adapter version id, so Serve routes a request to
  a replica that already holds its adapter and a full replica lets the least recently used go.
- `Trainer`: training workers (`loraserve worker`'s loop) on the shared database.
- `ReplicaBoard`: the predictors' metrics, served by the ingress's /metrics.

`serve run deploy/ray/serve.yaml` runs it on a cluster; `loraserve serve --ray` on this
machine. Settings come from each node's environment (LORASERVE_*), with the non-secret
overrides in `args.settings` on top.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import ray
from prometheus_client.core import Metric
from ray import serve
from ray.serve import Application, Deployment
from ray.serve.handle import DeploymentHandle

from app.deploy.board import PUBLISH_S, ReplicaBoard, replica_families
from app.deploy.remote import RemoteEngine
from app.deploy.replica import PredictorReplica
from app.engine import Mode, Result
from app.model import Rows
from app.settings import Settings

log = logging.getLogger("app.ray")
APP_NAME = "loraserve"
# Serve's own line per call would double our JSON access log, and the board takes a call
# from every replica every second.
_QUIET = {"enable_access_log": False}


def keep_grpc_on_node_address() -> None:
    """Bind each replica's inter-deployment gRPC server to the node's address, not `[::]`.

    Ray Serve binds that server on every interface of the machine (hard-coded), although
    requests reach replicas through Ray's own calls unless RAY_SERVE_USE_GRPC_BY_DEFAULT is on:
    the node's address is all any other node needs, and a test machine's is 127.0.0.1.
    Runs in each replica before Serve starts that server (after the constructor).
    """
    from ray.serve._private import replica

    bind = replica.add_port_to_grpc_server
    if getattr(bind, "_on_node_address", False):
        return
    host = ray.util.get_node_ip_address()
    host = f"[{host}]" if ":" in host else host

    def on_node_address(server: Any, address: str) -> int:
        if address.startswith("[::]:"):
            address = f"{host}:{address.rsplit(':', 1)[1]}"
        port: int = bind(server, address)
        return port

    on_node_address._on_node_address = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = on_node_address


class _Held:
    """An adapter version Serve's multiplexer holds; it calls __del__ when it lets it go."""

    def __init__(self, version: str, release: Callable[[str], None]) -> None:
        self.version = version
        self._release: Callable[[str], None] | None = release

    def __del__(self) -> None:
        # Serve calls this on eviction, and the garbage collector again later: once only,
        # or a later load of the same version would be evicted by the old holder.
        release, self._release = self._release, None
        if release is not None:
            release(self.version)


@serve.deployment(
    name="Predictor",
    logging_config=_QUIET,
    # Batching needs company: Ray's default of 5 requests per replica caps a batch at 5 rows.
    max_ongoing_requests=64,
    max_queued_requests=2048,  # then 503 "overloaded" from the ingress, not an endless queue
    health_check_period_s=2,
    graceful_shutdown_timeout_s=10,
)
class Predictor:
    async def __init__(  # type: ignore[misc]  # Serve awaits an async constructor
        self, overrides: dict[str, Any], max_adapters: int, board: DeploymentHandle
    ) -> None:
        keep_grpc_on_node_address()
        replica_id = serve.get_replica_context().replica_id.unique_id
        node = ray.get_runtime_context().get_node_id()
        settings = Settings(**overrides)
        self._replica = PredictorReplica(settings, max_adapters, replica_id, node)
        self._board = board

        async def hold(version: str) -> _Held:
            await self._replica.load(version)
            return _Held(version, self._replica.evict)

        self._adapter = serve.multiplexed(max_num_models_per_replica=max_adapters)(hold)
        self._publisher = asyncio.get_running_loop().create_task(self._publish())

    async def predict(self, x: Rows, versions: list[str | None], mode: Mode, param: str) -> Result:
        version = serve.get_multiplexed_model_id()
        if version:
            await self._adapter(version)
        return await self._replica.predict(x, versions, mode, param)

    async def _publish(self) -> None:
        while True:
            try:
                await self._board.put.remote(self._replica.snapshot())
            except Exception as exc:  # the board restarting: the next round will do
                log.warning("could not publish this replica's metrics: %s", exc)
            await asyncio.sleep(PUBLISH_S)

    async def __del__(self) -> None:
        self._publisher.cancel()
        with contextlib.suppress(Exception):
            await self._board.drop.remote(self._replica.replica)
        self._replica.close()


@serve.deployment(name="Trainer", logging_config=_QUIET, health_check_period_s=5)
class Trainer:
    """A training worker, as `loraserve worker` runs one, kept alive by Serve."""

    def __init__(self, overrides: dict[str, Any]) -> None:
        from app.services import build_worker

        keep_grpc_on_node_address()
        self._worker, self._state = build_worker(Settings(**overrides))
        self._thread = threading.Thread(target=self._worker.run, name="trainer", daemon=True)
        self._thread.start()

    def check_health(self) -> None:
        if not self._thread.is_alive():
            raise RuntimeError("the training worker's thread has stopped")

    def __del__(self) -> None:
        self._worker.stop()
        self._thread.join(timeout=30)
        self._state.db.close()


@serve.deployment(
    name="ReplicaBoard", logging_config=_QUIET, num_replicas=1, max_ongoing_requests=1024
)
class Board(ReplicaBoard):
    def __init__(self) -> None:
        keep_grpc_on_node_address()
        super().__init__()


@serve.deployment(
    name="Ingress",
    logging_config=_QUIET,
    # Each request waits on a predictor most of its time: many at once per replica.
    max_ongoing_requests=512,
    health_check_period_s=2,
    graceful_shutdown_timeout_s=10,
)
@serve.ingress()
class Ingress:
    def __init__(
        self,
        predictor: DeploymentHandle,
        board: DeploymentHandle,
        overrides: dict[str, Any],
        trainer: DeploymentHandle | None,
    ) -> None:
        """`trainer` is never called: it is bound here so that Serve deploys the trainers
        (only deployments the ingress's graph reaches are deployed)."""
        keep_grpc_on_node_address()
        # The ingress checks uploads against the base but runs no model: CPU, and no training.
        self._settings = Settings(**{**overrides, "device": "cpu", "embedded_worker": False})
        self._predictor = predictor
        self._board = board

    def __serve_build_asgi_app__(self) -> Any:
        from app.main import create_app

        return create_app(
            self._settings,
            remote_engine=lambda: RemoteEngine(self._predictor),
            replica_metrics=self._replica_metrics,
        )

    def _replica_metrics(self) -> Iterator[Metric]:
        """Read at scrape time, on /metrics's worker thread (a blocking call is fine there)."""
        try:
            snapshots = self._board.fresh.remote().result(timeout_s=5)
        except Exception as exc:
            log.warning("no replica metrics this scrape: %s", exc)
            return iter(())
        return replica_families(snapshots)


def _deployment(decorated: object) -> Deployment:
    """A class under @serve.deployment, as what the decorator made of it (mypy sees a class)."""
    assert isinstance(decorated, Deployment)
    return decorated


def build(args: dict[str, Any]) -> Application:
    """The application `serve run` and `loraserve serve --ray` deploy.

    args: `settings` (overrides of the nodes' LORASERVE_* environment; keep secrets in the
    environment), `adapters_per_replica` (48), `predictors` (replicas, 2), `max_predictors`
    (autoscaling ceiling, 8), `trainers` (1; 0 when `loraserve worker`s run elsewhere),
    `predictor_cpus` (1), `predictor_gpus` (0), `ingress_cpus` (0.5),
    `max_predictors_per_node` (no limit; 1 spreads them, so losing a node loses one),
    `ingress_resources` (custom Ray resources the ingress needs, to keep it on the nodes
    clients reach). A config file's `deployments:` section overrides any of the sizes.
    """
    overrides = dict(args.get("settings") or {})
    predictors = int(args.get("predictors", 2))
    predictor_options: dict[str, Any] = {
        "autoscaling_config": {
            "min_replicas": predictors,
            "max_replicas": max(predictors, int(args.get("max_predictors", 8))),
            # About a batch's worth of requests each before another replica pays its load.
            "target_ongoing_requests": 32,
        },
        "ray_actor_options": {
            "num_cpus": float(args.get("predictor_cpus", 1)),
            "num_gpus": float(args.get("predictor_gpus", 0)),
        },
    }
    if args.get("max_predictors_per_node"):
        predictor_options["max_replicas_per_node"] = int(args["max_predictors_per_node"])
    board = _deployment(Board).options(ray_actor_options={"num_cpus": 0}).bind()
    adapters = int(args.get("adapters_per_replica", 48))
    predictor = _deployment(Predictor).options(**predictor_options).bind(overrides, adapters, board)
    trainer = None
    if int(args.get("trainers", 1)):
        trainer = _deployment(Trainer).options(
            num_replicas=int(args.get("trainers", 1)), ray_actor_options={"num_cpus": 0}
        )
    ingress = _deployment(Ingress).options(
        autoscaling_config={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 256},
        ray_actor_options={
            "num_cpus": float(args.get("ingress_cpus", 0.5)),
            "resources": dict(args.get("ingress_resources") or {}),
        },
    )
    return ingress.bind(predictor, board, overrides, trainer and trainer.bind(overrides))
