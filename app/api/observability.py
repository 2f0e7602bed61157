"""Metrics (Prometheus), request ids and JSON logs."""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import internal_error
from app.engine.interface import Result
from app.logs import request_id

if TYPE_CHECKING:
    from app.families.decoder.generate.engine import GenerationEngine

_GOOD_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
access_log = logging.getLogger("app.access")
log = logging.getLogger(__name__)


ADAPTER_LABELS = 32  # adapters with a label of their own on /metrics; the rest are `other`


class AdapterTraffic:
    """Requests and tokens per adapter name, as routers need them (vLLM PR #45820).

    Labels stay bounded: the first ADAPTER_LABELS names to be among the busiest at a scrape get
    a label of their own and keep it (so their counters only grow); every other name counts
    under `other` (which drops by a name's count once, when that name gets its label)."""

    def __init__(self, labels: int = ADAPTER_LABELS) -> None:
        self.labels = labels
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], list[int]] = {}  # (project, name) -> [requests, tokens]
        self._labeled: list[tuple[str, str]] = []

    def record(self, project: str, names: Iterable[str], tokens: int = 0) -> None:
        """One request on each of `names` (name or name@version), with `tokens` for each."""
        with self._lock:
            for name in dict.fromkeys(n.partition("@")[0] for n in names):
                counts = self._counts.setdefault((project, name), [0, 0])
                counts[0] += 1
                counts[1] += tokens

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "loraserve_adapter_requests", "requests per adapter", labels=["project", "adapter"]
        )
        tokens = CounterMetricFamily(
            "loraserve_adapter_tokens",
            "prompt and generated tokens per adapter (texts; vector rows count none)",
            labels=["project", "adapter"],
        )
        with self._lock:
            spare = self.labels - len(self._labeled)
            if spare > 0:
                unlabeled = [k for k in self._counts if k not in self._labeled]
                unlabeled.sort(key=lambda k: -self._counts[k][0])
                self._labeled += unlabeled[:spare]
            labeled = set(self._labeled)
            other = [0, 0]
            for key, (n, t) in self._counts.items():
                if key in labeled:
                    requests.add_metric(list(key), n)
                    tokens.add_metric(list(key), t)
                else:
                    other[0] += n
                    other[1] += t
        requests.add_metric(["", "other"], other[0])
        tokens.add_metric(["", "other"], other[1])
        yield requests
        yield tokens


class Metrics:
    """The service's metrics, in a registry of its own (one per app, so tests do not collide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.adapters = AdapterTraffic()
        self.requests = Counter(
            "loraserve_requests", "HTTP requests", ["route", "method", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "loraserve_request_seconds", "HTTP request latency", ["route", "method"],
            registry=self.registry,
        )  # fmt: skip
        self.batch_rows = Histogram(
            "loraserve_batch_rows", "rows per model batch",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), registry=self.registry,
        )  # fmt: skip
        self.batches = Counter(
            "loraserve_batches", "model batches by mode", ["mode"], registry=self.registry
        )

        self.watch(self.adapters.collect)

    def record_batch(self, rows: int, mode: str) -> None:
        self.batch_rows.observe(rows)
        self.batches.labels(mode).inc()

    def watch(self, collect: Callable[[], Iterator[Metric]]) -> None:
        """Add gauges read at scrape time (queue depth, cache, jobs)."""

        class _Live(Collector):
            def collect(self) -> Iterator[Metric]:
                return collect()

        self.registry.register(_Live())


def live_metrics(services_of: Callable[[], Any]) -> Callable[[], Iterator[Metric]]:
    """Gauges and counters kept by the services themselves, read when scraped."""

    def collect() -> Iterator[Metric]:
        services = services_of()
        if services is None:
            return
        registry, engine, jobs = services.registry, services.engine, services.training.jobs
        yield GaugeMetricFamily(
            "loraserve_queue_rows", "rows waiting for the model", engine.queued_rows
        )
        yield GaugeMetricFamily("loraserve_adapters", "adapters registered", registry.count())
        yield GaugeMetricFamily(
            "loraserve_adapters_resident",
            "adapters with weights in memory",
            registry.resident_count,
        )
        yield GaugeMetricFamily(
            "loraserve_adapter_cache_bytes",
            "bytes of adapter weights in memory",
            registry.cached_bytes,
        )
        tiers = GaugeMetricFamily(
            "loraserve_adapters_by_tier",
            "adapters by where their weights are: the store only, host memory, device memory",
            labels=["tier"],
        )
        resident = registry.resident_count
        on_device = registry.base.device.type != "cpu"
        tiers.add_metric(["disk"], max(registry.count() - resident, 0))
        tiers.add_metric(["host"], 0 if on_device else resident)
        tiers.add_metric(["device"], resident if on_device else 0)
        yield tiers
        lookups = CounterMetricFamily(
            "loraserve_adapter_cache_lookups", "adapter weight lookups", labels=["result"]
        )
        lookups.add_metric(["hit"], registry.cache_hits)
        lookups.add_metric(["miss"], registry.cache_misses)
        yield lookups
        by_status = GaugeMetricFamily("loraserve_jobs", "fine-tuning jobs", labels=["status"])
        for status, count in jobs.count_by_status().items():
            by_status.add_metric([status], count)
        yield by_status
        if services.generation is not None:
            yield from generation_metrics(services.generation)

    return collect


def generation_metrics(engine: GenerationEngine) -> Iterator[Metric]:
    """A decoder's engine, as vLLM reports its own: sequences, tokens, KV cache."""
    yield GaugeMetricFamily(
        "loraserve_generation_running", "sequences in the running batch", engine.running
    )
    yield GaugeMetricFamily(
        "loraserve_generation_waiting", "sequences queued for the running batch", engine.waiting
    )
    yield CounterMetricFamily("loraserve_generation_steps", "engine steps", engine.steps)
    yield CounterMetricFamily(
        "loraserve_prompt_tokens", "prompt tokens prefilled", engine.tokens_prefilled
    )
    yield CounterMetricFamily(
        "loraserve_generation_tokens", "tokens generated", engine.tokens_generated
    )
    cache = engine.cache
    yield GaugeMetricFamily(
        "loraserve_kv_cache_bytes", "bytes of KV cache blocks held by sequences", cache.nbytes
    )
    yield GaugeMetricFamily("loraserve_kv_cache_budget_bytes", "KV_CACHE_BYTES", cache.budget_bytes)
    # vLLM's own names for the rest, under our prefix.
    pool = cache.pool
    yield GaugeMetricFamily("loraserve_kv_blocks_used", "KV cache blocks held", pool.used)
    yield GaugeMetricFamily(
        "loraserve_kv_blocks_free", "KV cache blocks free or cached by nobody", pool.free
    )
    yield GaugeMetricFamily(
        "loraserve_kv_cache_usage_perc",
        "fraction of the KV cache's blocks held (1 = full)",
        pool.used / max(pool.count - 1, 1),
    )
    yield CounterMetricFamily(
        "loraserve_prefix_cache_queries",
        "prompt tokens looked up in the prefix cache",
        pool.queries,
    )
    yield CounterMetricFamily(
        "loraserve_prefix_cache_hits", "prompt tokens found in the prefix cache", pool.hits
    )
    yield CounterMetricFamily(
        "loraserve_num_preemptions", "sequences preempted for want of KV blocks", engine.preemptions
    )


class RequestContext:
    """Request id in and out (X-Request-ID), a metrics sample and a JSON access log per request.

    It is also where a bug becomes a 500: the exception is logged once, as JSON with the request
    id and traceback, and the client gets the envelope with its X-Request-ID. A client that hangs
    up mid-request is logged as status 499 (nginx's "client closed request"), not as an error.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = given if _GOOD_ID.fullmatch(given) else uuid.uuid4().hex
        token = request_id.set(rid)
        start = time.perf_counter()
        status = 500
        started = gone = False

        async def watch_receive() -> Message:
            nonlocal gone
            message = await receive()
            # Seen before the answer started: the client gave up (FastAPI may still make a 400).
            gone = gone or (message["type"] == "http.disconnect" and not started)
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, watch_receive, send_with_id)
        except ClientDisconnect:
            gone = True
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if not started:
                await internal_error()(scope, receive, send_with_id)
        finally:
            status = 499 if gone else status
            elapsed = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"]
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.latency.labels(route, method).observe(elapsed)
            access_log.info(
                "request",
                extra={"method": method, "path": scope["path"], "route": route, "status": status,
                       "duration_ms": round(elapsed * 1000, 3)},
            )  # fmt: skip
            request_id.reset(token)


def server_timing(result: Result, start: float) -> dict[str, str]:
    """The Server-Timing header of an engine's answer: queue, model and total milliseconds."""
    total_ms = (time.perf_counter() - start) * 1000
    timing = (
        f"queue;dur={result.queue_ms:.3f}, model;dur={result.model_ms:.3f}, "
        f"total;dur={total_ms:.3f}"
    )
    return {"Server-Timing": timing}
