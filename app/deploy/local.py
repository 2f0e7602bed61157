"""`loraserve serve --ray`: the Serve application on a Ray cluster, this machine's by default."""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

from app.settings import Settings

log = logging.getLogger("app.ray")
# Ray's defaults that a service must not keep: usage reports sent out, and a node address
# picked from the machine's network interfaces for a cluster that is this machine alone.
_LOCAL_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def start_local_ray(num_cpus: int | None = None) -> None:
    """A one-machine Ray cluster whose every port is on 127.0.0.1, without the dashboard."""
    for name, value in _LOCAL_ENV.items():  # read when ray is first imported
        os.environ.setdefault(name, value)
    import ray

    ray.init(
        address="local",  # a new cluster, even where one already runs on this machine
        num_cpus=num_cpus,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
    )


def local_args(settings: Settings, predictors: int, cpus: int) -> dict[str, Any]:
    """The application's args on this machine: its folders by absolute path (replicas do not
    share our working directory), and CPUs shared out so every replica gets placed."""
    paths = {
        "base_model": str(settings.base_model.resolve()) if settings.base_model.exists() else
        str(settings.base_model),
        "adapters_dir": str(settings.adapters_dir.resolve()),
        "data_dir": str(settings.data_dir.resolve()),
    }  # fmt: skip
    return {
        "settings": paths,
        "predictors": predictors,
        "max_predictors": predictors,
        "predictor_cpus": min(1.0, max(cpus - 0.5, 0.5) / predictors),
        "ingress_cpus": 0.5 if cpus > 1 else 0.25,
    }


def run(settings: Settings, address: str | None, args: dict[str, Any]) -> None:
    """Deploy on `address` (a running cluster) or on a new local one; serve until a signal."""
    from app.logs import configure_logging

    configure_logging()
    if address is None:
        cpus = os.cpu_count() or 1
        here = local_args(settings, int(args.get("predictors", 2)), cpus)
        args = {**here, **args, "settings": {**here["settings"], **args.get("settings", {})}}
        # The workers inherit this environment and choose their OpenMP spin from it when they
        # import the package, before the base reaches them in the args (app.startup.openmp).
        os.environ["LORASERVE_BASE_MODEL"] = str(args["settings"]["base_model"])
        start_local_ray(cpus)
    import ray  # after start_local_ray: importing ray reads its environment
    from ray import serve

    from app.deploy.ray import APP_NAME, build

    if address is not None:
        ray.init(address=address, log_to_driver=False)
    stop = threading.Event()
    serving = False

    def on_signal(_signum: int, _frame: object) -> None:
        stop.set()
        if not serving:  # still deploying: break out of serve.run's wait
            raise KeyboardInterrupt

    def catch_signals() -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, on_signal)

    catch_signals()  # after ray.init, which sets its own
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        catch_signals()  # again: Ray's core installs its own handlers as Serve starts
        serve.run(build(args), name=APP_NAME, route_prefix="/", blocking=False)
        serving = True
        log.info("serving on Ray at http://%s:%d", settings.host, settings.port)
        stop.wait()
    except KeyboardInterrupt:  # a signal while the application was still starting
        pass
    log.info("stopping: Serve, then Ray")
    # Bounded: with a node already gone, Serve's shutdown can wait for ever, and a signal
    # must still stop the process (ray.shutdown ends the local cluster's processes).
    stopping = threading.Thread(target=serve.shutdown, daemon=True)
    stopping.start()
    stopping.join(timeout=30)
    if stopping.is_alive():
        log.warning("Serve did not shut down within 30 s; stopping Ray anyway")
    if address is None:
        ray.shutdown()
