"""The Serve application on a real Ray cluster (127.0.0.1 only), on PostgreSQL and S3.

Answers equal the single-process service's; requests stick to replicas holding their adapter;
changes reach every replica within REGISTRY_TTL_MS; a killed replica costs no client an error;
only the ingress speaks HTTP, behind the keys; replicas spread over two nodes survive one.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import ray
import torch
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from ray import serve
from safetensors.torch import load, save

from app.deploy.board import LORA_INFO, PUBLISH_S
from app.deploy.ray import APP_NAME, build
from app.main import create_app
from app.settings import Settings
from support.helpers import TINY_SIZES, adapter_files, lora_tensors, peft_config, reference_forward
from support.ray_app import ADMIN_KEY, CAPACITY, NODE, READ_KEY, TTL_MS, RayApp

TARGETS = ("layer1", "layer2")
OCTET = "application/octet-stream"
Adapter = tuple[dict[str, Any], dict[str, torch.Tensor]]


@pytest.fixture
def http(ray_app: RayApp) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ray_app.url, headers=ray_app.headers(), timeout=60) as client:
        yield client


def put_adapter(client: Any, name: str, seed: int, rank: int = 2) -> Adapter:
    config = peft_config(rank, 2.0 * rank, TARGETS)
    tensors = lora_tensors(TINY_SIZES, TARGETS, rank, seed=seed)
    files = adapter_files(config, tensors)
    response = client.post(
        "/v1/adapters?overwrite=true",
        data={"name": name},
        files={"config": ("adapter_config.json", files[0]), "weights": ("w.safetensors", files[1])},
    )
    assert response.status_code in (200, 201), response.text
    return config, tensors


def predict(client: Any, x: torch.Tensor, **body: Any) -> torch.Tensor:
    response = client.post("/v1/predict", json={"inputs": x.tolist(), **body})
    assert response.status_code == 200, response.text
    return torch.tensor(response.json()["outputs"])


def longhand(app: RayApp, x: torch.Tensor, adapter: Adapter | None) -> torch.Tensor:
    return reference_forward(app.base, x, *(adapter or (None, None))).float()


def replicas(client: httpx.Client) -> dict[str, dict[str, Any]]:
    """Each predictor replica's figures, from the ingress's /metrics."""
    text = client.get("/metrics").text
    seen: dict[str, dict[str, Any]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            replica = sample.labels.get("replica")
            if replica is None:
                continue
            entry = seen.setdefault(replica, {"node": sample.labels["node"]})
            if sample.name == LORA_INFO:
                running = sample.labels["running_lora_adapters"]
                entry["running"] = running.split(",") if running else []
                entry["max"] = int(sample.labels["max_lora"])
            elif sample.name == "loraserve_replica_adapter_loads_total":
                entry["loads"] = int(sample.value)
    return seen


def settled(client: httpx.Client) -> dict[str, dict[str, Any]]:
    """Replica figures taken after every replica has published what it did so far."""
    time.sleep(2.5 * PUBLISH_S)
    return replicas(client)


def loads(client: httpx.Client) -> int:
    return sum(r["loads"] for r in settled(client).values())


@contextmanager
def traffic(url: str, x: torch.Tensor, names: list[str], threads: int = 3) -> Iterator[list[Any]]:
    """Clients predicting without pause until the block ends; yields the failures seen."""
    failures: list[Any] = []
    done = threading.Event()

    def run(i: int) -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as c:
            n = 0
            while not done.is_set():
                name = names[(i + n) % len(names)]
                n += 1
                try:
                    r = c.post(
                        "/v1/predict", json={"inputs": x.tolist(), "adapter": name}, timeout=60
                    )
                    if r.status_code != 200:
                        failures.append((r.status_code, r.text[:300]))
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    try:
        yield failures
    finally:
        done.set()
        for w in workers:
            w.join(timeout=120)


def predictor_pids() -> list[int]:
    name = f"ServeReplica:{APP_NAME}:Predictor"
    return [
        p.pid for p in psutil.process_iter(["cmdline"]) if name in " ".join(p.info["cmdline"] or [])
    ]


def running_predictors() -> int:
    deployment = serve.status().applications[APP_NAME].deployments["Predictor"]
    return int(deployment.replica_states.get("RUNNING", 0))


def test_every_ray_port_is_on_loopback(ray_app: RayApp) -> None:
    """Ray's listeners and connections (ss -tnp's view, through psutil) never leave
    127.0.0.1, and nothing of Ray listens on every interface."""
    ray_pids = {
        p.pid
        for p in psutil.process_iter(["name", "cmdline"])
        if any(k in " ".join(p.info["cmdline"] or []) for k in ("ray::", "raylet", "gcs_server"))
        or "ray" in (p.info["name"] or "")
    }
    assert predictor_pids() and set(predictor_pids()) <= ray_pids
    sockets = [c for c in psutil.net_connections(kind="inet") if c.pid in ray_pids and c.laddr]
    assert sockets
    loopback = ("127.0.0.1", "::ffff:127.0.0.1")
    outside = [
        (psutil.Process(c.pid).name(), c.laddr, c.raddr)
        for c in sockets
        if c.laddr.ip not in loopback or (c.raddr and c.raddr.ip not in loopback)
    ]
    assert not outside


def test_answers_equal_the_single_process_service(
    ray_app: RayApp, http: httpx.Client, tmp_path: Path
) -> None:
    adapters = {f"eq{i}": put_adapter(http, f"eq{i}", seed=10 + i) for i in range(3)}
    single = Settings(
        **{**ray_app.settings, "adapters_dir": tmp_path / "a", "data_dir": tmp_path / "d"},
        embedded_worker=False,
    )
    x = torch.randn(5, TINY_SIZES[0], generator=torch.Generator().manual_seed(3))
    per_row = ["eq0", None, "eq2", "eq0", "eq1"]
    with TestClient(create_app(single), headers=ray_app.headers()) as local:
        for mode in ("unmerged", "merged", "auto"):
            for name, adapter in adapters.items():
                ours = predict(http, x, adapter=name, mode=mode)
                torch.testing.assert_close(ours, predict(local, x, adapter=name, mode=mode))
                torch.testing.assert_close(
                    ours, longhand(ray_app, x, adapter), atol=1e-5, rtol=1e-4
                )
            ours = predict(http, x, adapters=per_row, mode=mode)
            torch.testing.assert_close(ours, predict(local, x, adapters=per_row, mode=mode))
            for i, name in enumerate(per_row):  # each row as if it ran alone
                alone = predict(http, x[i : i + 1], adapter=name, mode=mode)
                torch.testing.assert_close(ours[i : i + 1], alone, atol=1e-6, rtol=1e-5)
            # Compositions, for every row and per row beside single adapters and the base.
            mix = [{"name": "eq0", "scale": 0.5}, {"name": "eq1", "scale": -1.0}]
            ours = predict(http, x, adapter=mix, mode=mode)
            torch.testing.assert_close(ours, predict(local, x, adapter=mix, mode=mode))
            rows = [mix, None, "eq2", [{"name": "eq2", "scale": 2.0}], mix]
            ours = predict(http, x, adapters=rows, mode=mode)
            torch.testing.assert_close(ours, predict(local, x, adapters=rows, mode=mode))
        # Safetensors both ways, per-row adapters in the metadata.
        body = save({"inputs": x}, metadata={"adapters": json.dumps(per_row)})
        answers = []
        for client in (http, local):
            response = client.post(
                "/v1/predict", content=body, headers={"content-type": OCTET, "accept": OCTET}
            )
            assert response.status_code == 200, response.text
            answers.append(load(response.content)["outputs"])
        torch.testing.assert_close(answers[0], answers[1])


def test_errors_come_back_as_in_one_process(ray_app: RayApp, http: httpx.Client) -> None:
    x = torch.zeros(1, TINY_SIZES[0])
    missing = http.post("/v1/predict", json={"inputs": x.tolist(), "adapter": "nope"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "adapter_not_found"
    wrong = http.post("/v1/predict", json={"inputs": [[1.0, 2.0]]})
    assert wrong.status_code == 422


def test_a_working_set_that_fits_stops_loading(ray_app: RayApp, http: httpx.Client) -> None:
    names = [f"fit{i}" for i in range(CAPACITY + 2)]  # fits two replicas of CAPACITY
    adapters = {n: put_adapter(http, n, seed=100 + i) for i, n in enumerate(names)}
    x = torch.randn(1, TINY_SIZES[0])
    for _ in range(3):  # warm-up: Serve learns which replica holds which version
        for n in names:
            predict(http, x, adapter=n)
        time.sleep(1.0)
    before = loads(http)
    for i in range(120):
        name = names[i % len(names)]
        torch.testing.assert_close(
            predict(http, x, adapter=name), longhand(ray_app, x, adapters[name]),
            atol=1e-5, rtol=1e-4,
        )  # fmt: skip
    assert loads(http) == before


def test_past_capacity_the_least_recently_used_goes(ray_app: RayApp, http: httpx.Client) -> None:
    names = [f"lru{i}" for i in range(3 * CAPACITY)]
    adapters = {n: put_adapter(http, n, seed=200 + i) for i, n in enumerate(names)}
    x = torch.randn(2, TINY_SIZES[0])
    before = loads(http)
    order: list[str] = []
    for _ in range(2):
        for name in names:
            torch.testing.assert_close(
                predict(http, x, adapter=name), longhand(ray_app, x, adapters[name]),
                atol=1e-5, rtol=1e-4,
            )  # fmt: skip
            order.append(name)
    after = settled(http)
    assert sum(r["loads"] for r in after.values()) - before >= len(names)
    versions = {r["version"]: r["name"] for r in http.get("/v1/adapters").json()["data"]}
    last_use = {name: i for i, name in enumerate(order)}
    for replica in after.values():
        held = [versions[v] for v in replica["running"] if versions.get(v, "").startswith("lru")]
        assert len(replica["running"]) <= replica["max"] == CAPACITY
        # Least recently used first: the order the client last asked for them in.
        assert held == sorted(held, key=last_use.__getitem__)


def test_changes_reach_every_replica_within_the_ttl(
    ray_app: RayApp, http: httpx.Client, tmp_path: Path
) -> None:
    """Writes through another API process on the same state, and through the ingress."""
    x = torch.randn(3, TINY_SIZES[0])
    other = Settings(
        **{**ray_app.settings, "adapters_dir": tmp_path / "a", "data_dir": tmp_path / "d"},
        embedded_worker=False,
    )
    with TestClient(create_app(other), headers=ray_app.headers()) as elsewhere:
        first = put_adapter(elsewhere, "ttl", seed=300)
        written = time.monotonic()
        while (
            http.post("/v1/predict", json={"inputs": x.tolist(), "adapter": "ttl"}).status_code
            != 200
        ):
            time.sleep(0.02)
        assert time.monotonic() - written <= TTL_MS / 1000 + 0.5
        torch.testing.assert_close(
            predict(http, x, adapter="ttl"), longhand(ray_app, x, first), atol=1e-5, rtol=1e-4
        )
        second = put_adapter(elsewhere, "ttl", seed=301)
        time.sleep(TTL_MS / 1000 + 0.1)
        for _ in range(10):  # both replicas (routing spreads a version once it is hot)
            torch.testing.assert_close(
                predict(http, x, adapter="ttl"), longhand(ray_app, x, second), atol=1e-5, rtol=1e-4
            )
        # Through the ingress: an overwrite is served at once, a delete answers 404 at once.
        third = put_adapter(http, "ttl", seed=302)
        torch.testing.assert_close(
            predict(http, x, adapter="ttl"), longhand(ray_app, x, third), atol=1e-5, rtol=1e-4
        )
        assert http.delete("/v1/adapters/ttl").status_code == 204
        gone = http.post("/v1/predict", json={"inputs": x.tolist(), "adapter": "ttl"})
        assert gone.status_code == 404
        time.sleep(TTL_MS / 1000 + 0.1)
        assert (
            elsewhere.post("/v1/predict", json={"inputs": x.tolist(), "adapter": "ttl"}).status_code
            == 404
        )


def test_the_trainer_replica_trains_and_the_predictors_serve_the_result(
    http: httpx.Client,
) -> None:
    data = save(
        {"inputs": torch.randn(32, TINY_SIZES[0]), "targets": torch.randn(32, TINY_SIZES[-1])}
    )
    dataset = http.post("/v1/datasets", files={"file": ("d.safetensors", data)})
    assert dataset.status_code == 201, dataset.text
    body = {
        "adapter_name": "trained",
        "training_dataset": dataset.json()["id"],
        "hyperparameters": {"rank": 1, "epochs": 2, "batch_size": 16},
    }
    job = http.post("/v1/fine-tuning/jobs", json=body)
    assert job.status_code == 201, job.text
    deadline = time.monotonic() + 120
    while (state := http.get(f"/v1/fine-tuning/jobs/{job.json()['id']}").json())["status"] not in (
        "succeeded", "failed", "cancelled",
    ):  # fmt: skip
        assert time.monotonic() < deadline, state
        time.sleep(0.2)
    assert state["status"] == "succeeded", state
    x = torch.randn(2, TINY_SIZES[0])
    assert predict(http, x, adapter="trained").shape == (2, TINY_SIZES[-1])


def test_only_the_ingress_speaks_http_and_it_checks_keys(ray_app: RayApp) -> None:
    x = torch.zeros(1, TINY_SIZES[0]).tolist()
    with httpx.Client(base_url=ray_app.url, timeout=30) as anonymous:
        assert anonymous.post("/v1/predict", json={"inputs": x}).status_code == 401
        assert anonymous.get("/v1/adapters").status_code == 401
        wrong = anonymous.post(
            "/v1/predict", json={"inputs": x}, headers={"Authorization": "Bearer wrong"}
        )
        assert wrong.status_code == 401
        reader = {"Authorization": f"Bearer {READ_KEY}"}
        assert anonymous.post("/v1/predict", json={"inputs": x}, headers=reader).status_code == 200
        refused = anonymous.delete("/v1/adapters/eq0", headers=reader)
        assert refused.status_code == 403
        assert anonymous.get("/-/routes").json() == {"/": APP_NAME}
    # Whatever the predictor processes listen on (Ray's own gRPC), none answers HTTP.
    pids = predictor_pids()
    ports = {
        c.laddr.port
        for c in psutil.net_connections(kind="tcp")
        if c.pid in pids and c.status == psutil.CONN_LISTEN
    }
    assert ports
    for port in ports:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.settimeout(1.0)
            s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n")
            try:
                answer = s.recv(64)
            except (TimeoutError, ConnectionResetError):
                answer = b""
        assert not answer.startswith(b"HTTP/"), (port, answer)


def test_a_killed_predictor_costs_no_client_an_error(ray_app: RayApp, http: httpx.Client) -> None:
    names = [f"kill{i}" for i in range(3)]
    for i, n in enumerate(names):
        put_adapter(http, n, seed=400 + i)
    x = torch.randn(1, TINY_SIZES[0])
    assert running_predictors() == 2
    with traffic(ray_app.url, x, names) as failures:
        time.sleep(2)
        victim = predictor_pids()[0]
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        time.sleep(1)
        while running_predictors() < 2 or victim in predictor_pids():
            assert time.monotonic() - killed < 30, "the replica was not replaced within 30 s"
            time.sleep(0.25)
        recovered = time.monotonic() - killed
        time.sleep(2)
    assert failures == []
    assert recovered < 30


def test_replicas_spread_over_two_nodes_survive_losing_one(
    ray_app: RayApp, http: httpx.Client
) -> None:
    """Last in this module: it deploys the application again, with one predictor per node."""
    node = ray_app.cluster.add_node(num_cpus=2, **NODE)
    ray_app.cluster.wait_for_nodes()
    args = {
        "settings": ray_app.settings, "predictors": 2, "max_predictors": 2,
        "max_predictors_per_node": 1, "adapters_per_replica": CAPACITY,
        "predictor_cpus": 0.5, "ingress_cpus": 0.25, "ingress_resources": {"ingress": 0.01},
    }  # fmt: skip
    serve.delete(APP_NAME)  # an update would keep the replicas where they are
    serve.run(build(args), name=APP_NAME, route_prefix="/")
    names = ["spread0", "spread1"]
    for i, n in enumerate(names):
        put_adapter(http, n, seed=500 + i)
    deadline = time.monotonic() + 30
    while len({r["node"] for r in replicas(http).values()}) < 2:
        assert time.monotonic() < deadline, (
            replicas(http),
            [n["NodeID"] for n in ray.nodes()],
            serve.status().applications[APP_NAME].deployments["Predictor"],
        )
        time.sleep(0.5)
    x = torch.randn(1, TINY_SIZES[0])
    with traffic(ray_app.url, x, names) as failures:
        time.sleep(2)
        ray_app.cluster.remove_node(node, allow_graceful=False)
        time.sleep(8)
        served_after = len(failures)
    assert failures == [] and served_after == 0
    assert predict(http, x, adapter="spread0").shape == (1, TINY_SIZES[-1])
