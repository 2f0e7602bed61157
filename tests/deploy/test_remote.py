"""The ingress's engine without a cluster: routing keys, errors and the retry on replica loss."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch
from ray.exceptions import ActorDiedError, RayTaskError
from ray.serve.exceptions import BackPressureError

from app.deploy.remote import RemoteEngine, routing_key
from app.engine import Result
from app.errors import AdapterNotFound, QueueFull, ServiceUnavailable


def test_routing_key_is_the_most_frequent_adapter() -> None:
    assert routing_key(["a", "b", "b", None, None, None]) == "b"
    assert routing_key(["a"]) == "a"
    assert routing_key([None, None]) == ""  # the base alone: any replica
    # A composition's versions count, and a composition key is never a routing key.
    v1, v2 = "1" * 64, "2" * 64
    assert routing_key([f"{v1}*0.5+{v2}*-1.0", v2, None]) == v2
    assert routing_key([f"{v1}*0.5"]) == v1


class FakeHandle:
    """A Serve handle whose calls raise the queued outcomes in turn, recording the routing."""

    def __init__(self, *outcomes: Any) -> None:
        self.outcomes = list(outcomes)
        self.routed: list[str] = []
        self.predict = self

    def options(self, multiplexed_model_id: str) -> FakeHandle:
        self.routed.append(multiplexed_model_id)
        return self

    def remote(self, *args: Any) -> Any:
        outcome = self.outcomes.pop(0)

        async def answer() -> Any:
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome

        return answer()


def submit(handle: FakeHandle, names: list[str | None]) -> Result:
    engine = RemoteEngine(handle)
    return asyncio.run(engine.submit(torch.zeros(len(names), 4), names, "auto", "adapters"))


def ok() -> Result:
    return Result(torch.ones(1, 2), "unmerged", 0.1, 0.2)


def died() -> ActorDiedError:
    return ActorDiedError()


def test_a_request_lost_with_its_replica_is_sent_once_more() -> None:
    handle = FakeHandle(died(), ok())
    assert submit(handle, ["v1"]).mode == "unmerged"
    assert handle.routed == ["v1"] and not handle.outcomes


def test_a_second_loss_is_a_503_not_a_500() -> None:
    with pytest.raises(ServiceUnavailable):
        submit(FakeHandle(died(), died()), ["v1"])


def test_our_errors_on_the_replica_come_back_as_themselves() -> None:
    cause = AdapterNotFound("adapter version 'v1' not found", "adapter")
    wrapped = RayTaskError("predict", "traceback", cause)
    with pytest.raises(AdapterNotFound):
        submit(FakeHandle(wrapped), ["v1"])
    with pytest.raises(RayTaskError):  # a bug stays a bug (500), not a retry
        submit(FakeHandle(RayTaskError("predict", "traceback", ValueError("bug"))), ["v1"])


def test_busy_replicas_are_a_503() -> None:
    with pytest.raises(QueueFull):
        submit(FakeHandle(BackPressureError(num_queued_requests=9, max_queued_requests=8)), [None])


def test_rows_in_flight_are_counted_until_answered() -> None:
    engine = RemoteEngine(FakeHandle(died(), died()))
    with pytest.raises(ServiceUnavailable):
        asyncio.run(engine.submit(torch.zeros(3, 4), [None] * 3, "auto", "adapters"))
    assert engine.queued_rows == 0
