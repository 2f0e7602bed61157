"""Prometheus metrics, request ids, JSON logs."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.main import create_app
from support.http import make_files, upload


def samples(client: TestClient) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_count_requests_batches_and_cache(client: TestClient) -> None:
    upload(client, "a", *make_files()[2])
    row = {"inputs": [[0.1] * 16], "adapter": "a"}
    for _ in range(3):
        assert client.post("/v1/predict", json=row).status_code == 200
    client.get("/v1/adapters/missing")
    m = samples(client)
    key = (("method", "POST"), ("route", "/v1/predict"), ("status", "200"))
    assert m[("loraserve_requests_total", key)] == 3
    assert (
        m[
            (
                "loraserve_requests_total",
                (("method", "GET"), ("route", "/v1/adapters/{name}"), ("status", "404")),
            )
        ]
        == 1
    )
    assert (
        m[("loraserve_request_seconds_count", (("method", "POST"), ("route", "/v1/predict")))] == 3
    )
    assert m[("loraserve_batches_total", (("mode", "unmerged"),))] == 3
    assert m[("loraserve_batch_rows_count", ())] == 3
    assert m[("loraserve_adapter_cache_lookups_total", (("result", "miss"),))] == 1
    assert m[("loraserve_adapter_cache_lookups_total", (("result", "hit"),))] == 2
    assert m[("loraserve_adapters", ())] == 1
    assert m[("loraserve_adapters_resident", ())] == 1
    assert m[("loraserve_queue_rows", ())] == 0


def test_request_ids_go_in_and_out(client: TestClient) -> None:
    given = client.get("/healthz", headers={"x-request-id": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    made = client.get("/healthz")
    assert len(made.headers["x-request-id"]) == 32
    unsafe = client.get("/healthz", headers={"x-request-id": "no spaces\tor tabs"})
    assert unsafe.headers["x-request-id"] != "no spaces\tor tabs"
    assert client.get("/v1/nope").headers["x-request-id"]  # errors carry one too


def test_logs_are_json_lines_with_the_request_id(settings, capsys) -> None:
    with TestClient(create_app(settings)) as client:
        client.get("/healthz", headers={"x-request-id": "trace-me"})
    lines = [
        json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")
    ]
    access = [line for line in lines if line.get("request_id") == "trace-me"]
    assert access and access[0]["logger"] == "app.access" and access[0]["status"] == 200
    assert access[0]["path"] == "/healthz" and "duration_ms" in access[0]
    assert any(line["message"].startswith("ready in") for line in lines)


def test_metrics_count_requests_per_adapter_and_residency_per_tier(client: TestClient) -> None:
    upload(client, "a", *make_files(seed=1)[2])
    upload(client, "b", *make_files(seed=2)[2])
    upload(client, "c", *make_files(seed=3)[2])
    x = [[0.1] * 16]
    for body in (
        {"adapter": "a"},
        {"adapter": "a"},
        {"adapter": [{"name": "a", "scale": 0.5}, {"name": "b", "scale": 2.0}]},
        {"adapters": [None]},
    ):
        assert client.post("/v1/predict", json={"inputs": x, **body}).status_code == 200
    got = samples(client)

    def requests(adapter: str, project: str = "default") -> float:
        key = ("loraserve_adapter_requests_total", (("adapter", adapter), ("project", project)))
        return got.get(key, 0.0)

    assert requests("a") == 3 and requests("b") == 1 and requests("c") == 0
    assert requests("other", "") == 0
    tiers = {
        t: got[("loraserve_adapters_by_tier", (("tier", t),))] for t in ("disk", "host", "device")
    }
    assert tiers == {"disk": 1, "host": 2, "device": 0}  # a and b were read into memory; c not


def test_adapter_labels_stay_bounded_and_their_counters_only_grow() -> None:
    from app.api.observability import AdapterTraffic

    traffic = AdapterTraffic(labels=2)

    def counts() -> dict[str, float]:
        return {
            s.labels["adapter"]: s.value
            for family in traffic.collect()
            if family.name == "loraserve_adapter_requests"
            for s in family.samples
        }

    for name, times in (("x", 3), ("y", 2), ("z", 1)):
        for _ in range(times):
            traffic.record("p", [name], tokens=5)
    assert counts() == {"x": 3, "y": 2, "other": 1}  # the two busiest get their labels
    for _ in range(10):
        traffic.record("p", ["z@" + "0" * 64])  # a version counts under its name
    assert counts() == {"x": 3, "y": 2, "other": 11}  # labels, once given, stay
    tokens = {
        s.labels["adapter"]: s.value
        for family in traffic.collect()
        if family.name == "loraserve_adapter_tokens"
        for s in family.samples
    }
    assert tokens == {"x": 15, "y": 10, "other": 5}
