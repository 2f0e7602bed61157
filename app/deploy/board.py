"""Every predictor replica's metrics, gathered where the ingress's /metrics can serve them.

Replicas publish a snapshot to the board about every second; the ingress renders the fresh
ones as Prometheus families labelled by replica and node. One of them is the gauge Kubernetes'
inference routers read for adapter affinity, in vLLM's shape (`vllm:lora_requests_info`):
labels `running_lora_adapters`, `waiting_lora_adapters`, `max_lora`, value the snapshot's time.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from app.deploy.replica import ReplicaSnapshot

PUBLISH_S = 1.0
STALE_S = 5 * PUBLISH_S  # a replica silent this long is gone (killed, or scaled down)
LORA_INFO = "loraserve:lora_requests_info"


class ReplicaBoard:
    """The latest snapshot of every replica (held by one small Serve deployment)."""

    def __init__(self) -> None:
        self._latest: dict[str, ReplicaSnapshot] = {}

    def put(self, snapshot: ReplicaSnapshot) -> None:
        self._latest[snapshot.replica] = snapshot

    def drop(self, replica: str) -> None:
        self._latest.pop(replica, None)

    def fresh(self) -> list[ReplicaSnapshot]:
        """The snapshots of replicas heard from within STALE_S."""
        now = time.time()
        for name in [n for n, s in self._latest.items() if now - s.at > STALE_S]:
            del self._latest[name]
        return sorted(self._latest.values(), key=lambda s: s.replica)


def replica_families(snapshots: Iterable[ReplicaSnapshot]) -> Iterator[Metric]:
    labels = ["replica", "node"]
    info = GaugeMetricFamily(
        LORA_INFO,
        "adapters each predictor replica holds and waits for (vLLM's lora_requests_info shape)",
        labels=[*labels, "running_lora_adapters", "waiting_lora_adapters", "max_lora"],
    )
    loads = CounterMetricFamily(
        "loraserve_replica_adapter_loads", "adapter weights read from the store", labels=labels
    )
    resident = GaugeMetricFamily(
        "loraserve_replica_adapters_resident", "adapters with weights in memory", labels=labels
    )
    queued = GaugeMetricFamily(
        "loraserve_replica_queue_rows", "rows waiting for the model", labels=labels
    )
    batches = CounterMetricFamily(
        "loraserve_replica_batches", "model batches by mode", labels=[*labels, "mode"]
    )
    rows = CounterMetricFamily("loraserve_replica_rows", "rows through the model", labels=labels)
    for s in snapshots:
        who = [s.replica, s.node]
        running, waiting = ",".join(s.running), ",".join(s.waiting)
        info.add_metric([*who, running, waiting, str(s.max_adapters)], s.at)
        loads.add_metric(who, s.loads)
        resident.add_metric(who, len(s.running))
        queued.add_metric(who, s.queued_rows)
        for mode, count in sorted(s.batches.items()):
            batches.add_metric([*who, mode], count)
        rows.add_metric(who, s.rows)
    yield from (info, loads, resident, queued, batches, rows)
