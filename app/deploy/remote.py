"""The Ray ingress's engine: each prediction goes to a predictor replica, by its adapter."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from app.engine import Mode, Result
from app.engine.compositions import parts_of
from app.errors import QueueFull, ServiceError, ServiceUnavailable
from app.model import Rows

log = logging.getLogger(__name__)
# A replica that died, or stopped answering, with the request on it: another one may serve it.
_LOST = (ActorDiedError, ActorUnavailableError, RayActorError, DeploymentUnavailableError)


def routing_key(versions: list[str | None]) -> str:
    """The version a request is routed by: its rows' most frequent adapter version, counting
    each version of a row's composition ("" for the base alone, which any replica serves); the
    replica it lands on loads the others. Always a version: the multiplexer loads what it is
    routed by."""
    counts = Counter(
        version
        for key in versions
        if key is not None
        for version, _ in (parts_of(key) or ((key, 1.0),))
    )
    return counts.most_common(1)[0][0] if counts else ""


class RemoteEngine:
    """Sends each request to the predictor deployment through a Serve handle, multiplexed by
    adapter version, so it lands on a replica that already holds that adapter.

    A request whose replica dies under it is sent once more (to another replica: Serve's
    router drops a dead one); a second loss is a 503. Batching happens inside each replica.
    """

    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self._rows = 0  # rows sent and not yet answered

    @property
    def queued_rows(self) -> int:
        return self._rows

    def start(self) -> None:
        """Nothing to start here: Serve runs the replicas."""

    def stop(self) -> None:
        """Nothing to stop here: Serve runs the replicas."""

    async def submit(self, x: Rows, names: list[str | None], mode: Mode, param: str) -> Result:
        call = self._handle.options(multiplexed_model_id=routing_key(names)).predict
        self._rows += len(x)
        try:
            try:
                return await _once(call, x, names, mode, param)
            except _LOST as exc:
                log.warning("a predictor replica was lost mid-request, retrying: %s", exc)
            try:
                return await _once(call, x, names, mode, param)
            except _LOST as exc:
                raise ServiceUnavailable(
                    "the predictor replicas serving this request were lost; retry"
                ) from exc
        finally:
            self._rows -= len(x)


async def _once(call: Any, *args: Any) -> Result:
    """One call to a replica; our own errors come back as themselves (a 404 stays a 404)."""
    try:
        result: Result = await call.remote(*args)
    except RayTaskError as exc:
        if isinstance(exc.cause, ServiceError):
            raise exc.cause from None
        raise
    except BackPressureError as exc:
        raise QueueFull("every predictor replica is busy; retry shortly") from exc
    return result
