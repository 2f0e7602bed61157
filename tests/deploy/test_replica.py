"""A predictor replica and the metrics board without a cluster."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.registry import Collector

from app.deploy import board as board_module
from app.deploy.board import LORA_INFO, ReplicaBoard, replica_families
from app.deploy.ray import _Held, keep_grpc_on_node_address
from app.deploy.replica import PredictorReplica, ReplicaSnapshot
from app.settings import Settings
from support.helpers import TINY_SIZES, adapter_files, lora_tensors, peft_config, reference_forward

TARGETS = ("layer1", "layer2")


@pytest.fixture
def replica(settings: Settings) -> Iterator[PredictorReplica]:
    running = PredictorReplica(settings, max_adapters=2, replica="r1", node="n1")
    try:
        yield running
    finally:
        running.close()


def add(replica: PredictorReplica, name: str, seed: int) -> tuple[str, Any, Any]:
    config = peft_config(2, 4.0, TARGETS)
    tensors = lora_tensors(TINY_SIZES, TARGETS, 2, seed=seed)
    record = replica.registry.upload(name, *adapter_files(config, tensors))
    return record.version, config, tensors


def test_loads_predicts_and_lets_go(replica: PredictorReplica, settings: Settings) -> None:
    version, config, tensors = add(replica, "a", seed=1)
    asyncio.run(replica.load(version))
    snapshot = replica.snapshot()
    assert snapshot.running == [version] and snapshot.loads == 1 and snapshot.waiting == []
    x = torch.randn(3, TINY_SIZES[0])
    result = asyncio.run(replica.predict(x, [version, None, version], "unmerged", "adapters"))
    expected = reference_forward(settings.base_model, x, config, tensors).float()
    torch.testing.assert_close(result.outputs[0], expected[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(
        result.outputs[1:2], reference_forward(settings.base_model, x[1:2]).float(),
        atol=1e-5, rtol=1e-4,
    )  # fmt: skip
    assert replica.snapshot().batches == {"unmerged": 1} and replica.snapshot().rows == 3
    replica.evict(version)
    assert replica.snapshot().running == []


def test_never_holds_more_than_its_capacity(replica: PredictorReplica) -> None:
    versions = [add(replica, f"c{i}", seed=i)[0] for i in range(3)]
    for version in versions:
        asyncio.run(replica.load(version))
    # Rows of a mixed request load adapters the multiplexer never saw: the cap holds anyway.
    assert replica.snapshot().running == versions[1:]


def test_a_holder_releases_its_version_once() -> None:
    released: list[str] = []
    old = _Held("v", released.append)
    old.__del__()  # Serve's eviction
    new = _Held("v", released.append)  # the same version loaded again later
    del old
    gc.collect()  # the old holder collected: it must not release the new load
    assert released == ["v"]
    del new
    gc.collect()
    assert released == ["v", "v"]


def test_the_board_forgets_silent_replicas(monkeypatch: pytest.MonkeyPatch) -> None:
    board = ReplicaBoard()
    now = time.time()
    board.put(ReplicaSnapshot("live", "n", now, ["v1", "v2"], ["v3"], 48, 5, 0, {"merged": 2}, 7))
    board.put(ReplicaSnapshot("gone", "n", now - board_module.STALE_S - 1, [], [], 48, 0, 0))
    assert [s.replica for s in board.fresh()] == ["live"]
    registry = CollectorRegistry()

    class Families(Collector):
        def collect(self) -> Iterator[Any]:
            return replica_families(board.fresh())

    registry.register(Families())
    text = generate_latest(registry).decode()
    assert (
        f'{LORA_INFO}{{max_lora="48",node="n",replica="live",running_lora_adapters="v1,v2",'
        'waiting_lora_adapters="v3"}' in text
    )
    assert 'loraserve_replica_adapter_loads_total{node="n",replica="live"} 5.0' in text
    assert 'loraserve_replica_batches_total{mode="merged",node="n",replica="live"} 2.0' in text


def test_replica_grpc_binds_the_node_address(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.serve._private import replica

    bound: list[str] = []
    monkeypatch.setattr(replica, "add_port_to_grpc_server", lambda _s, a: bound.append(a) or 1)
    monkeypatch.setattr("ray.util.get_node_ip_address", lambda: "127.0.0.1")
    keep_grpc_on_node_address()
    keep_grpc_on_node_address()  # once per process, however many replicas start in it
    assert replica.add_port_to_grpc_server(None, "[::]:0") == 1
    assert bound == ["127.0.0.1:0"]
