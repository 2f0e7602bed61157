"""Several processes on one PostgreSQL and one S3 server, all on 127.0.0.1, as deployed.

Two API processes (A and B) and two training workers (`loraserve worker`) share the state:
names resolve across replicas within REGISTRY_TTL_MS, racing overwrites leave one whole
version, each of 100 jobs runs exactly once, and a worker killed mid-job only loses that job.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import save

from app.adapters.versions import version_id
from support.helpers import (
    adapter_files,
    lora_tensors,
    peft_config,
    reference_forward,
    write_base_model,
)
from support.server import ROOT, running_server
from support.services import BUCKET, new_database

TTL_MS = 500
LEASE_MS = 1000


@pytest.fixture
def shared(tmp_path: Path, postgres_server_url: str, s3_endpoint: str) -> dict[str, str]:
    """Settings every process of one deployment shares: a fresh database, a fresh prefix."""
    return {
        "database_url": new_database(postgres_server_url),
        "store_url": f"s3://{BUCKET}/{tmp_path.name}",
        "s3_endpoint_url": s3_endpoint,
        "registry_ttl_ms": str(TTL_MS),
        "job_lease_ms": str(LEASE_MS),
        "base_model": str(write_base_model(tmp_path / "base")),
        "max_queued_jobs": "200",
    }


@contextmanager
def api(tmp_path: Path, name: str, shared: dict[str, str], **extra: str) -> Iterator[str]:
    """An API process with its own local folders; training only by the workers."""
    with running_server(tmp_path / name, embedded_worker="false", **shared, **extra) as server:
        yield server.url


@contextmanager
def worker(tmp_path: Path, name: str, shared: dict[str, str]) -> Iterator[subprocess.Popen]:
    env = {
        **os.environ,
        "LORASERVE_DATA_DIR": str(tmp_path / name / "data"),
        "LORASERVE_ADAPTERS_DIR": str(tmp_path / name / "adapters"),
        "LORASERVE_DEVICE": "cpu",
        **{f"LORASERVE_{k.upper()}": v for k, v in shared.items()},
    }
    command = [str(Path(sys.executable).parent / "loraserve"), "worker"]
    log = (tmp_path / f"{name}.log").open("wb")
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
        log.close()


def files(seed: int, r: int = 2) -> tuple[dict, dict, tuple[bytes, bytes]]:
    targets = ["layer1", "layer2"]
    config = peft_config(r, 4.0, targets)
    tensors = lora_tensors([16, 8, 4], targets, r, seed)
    return config, tensors, adapter_files(config, tensors)


def upload(url: str, name: str, content: tuple[bytes, bytes]) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/adapters",
        params={"overwrite": "true"},
        data={"name": name},
        files={"config": ("c", content[0]), "weights": ("w", content[1])},
        timeout=30,
    )


def predict(url: str, x: torch.Tensor, adapter: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/predict", json={"inputs": x.tolist(), "adapter": adapter})


def matches(response: httpx.Response, ref: torch.Tensor) -> bool:
    out = torch.tensor(response.json()["outputs"], dtype=torch.float64)
    return bool(torch.allclose(out, ref, rtol=1e-5, atol=1e-5))


def test_replicas_share_names_and_stop_serving_an_old_version_within_the_ttl(
    tmp_path: Path, shared: dict[str, str]
) -> None:
    base = Path(shared["base_model"])
    x = torch.randn(2, 16)
    with api(tmp_path, "a", shared) as a, api(tmp_path, "b", shared) as b:
        first = files(1)
        assert upload(a, "shared", first[2]).status_code == 201
        response = predict(b, x, "shared")  # B never saw it: resolved on arrival
        assert response.status_code == 200, response.text
        assert matches(response, reference_forward(base, x, first[0], first[1]))

        second = files(2)
        assert upload(a, "shared", second[2]).status_code == 201
        time.sleep(TTL_MS / 1000 + 0.05)
        assert matches(predict(b, x, "shared"), reference_forward(base, x, second[0], second[1]))
        pinned = httpx.get(f"{b}/v1/adapters/shared/versions").json()["data"][-1]["version"]
        response = predict(b, x, f"shared@{pinned}")  # the first version, pinned
        assert matches(response, reference_forward(base, x, first[0], first[1]))

        assert httpx.delete(f"{a}/v1/adapters/shared").status_code == 204
        time.sleep(TTL_MS / 1000 + 0.05)
        response = predict(b, x, "shared")
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "adapter_not_found"


def test_overwrites_racing_on_two_replicas_leave_one_whole_version(
    tmp_path: Path, shared: dict[str, str]
) -> None:
    base = Path(shared["base_model"])
    contents = {seed: files(seed) for seed in range(10)}
    with api(tmp_path, "a", shared) as a, api(tmp_path, "b", shared) as b:
        statuses: list[int] = []

        def writer(url: str, seeds: list[int]) -> None:
            for seed in seeds:
                statuses.append(upload(url, "raced", contents[seed][2]).status_code)

        threads = [
            threading.Thread(target=writer, args=(a, list(range(0, 10, 2)))),
            threading.Thread(target=writer, args=(b, list(range(1, 10, 2)))),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert statuses == [201] * 10
        time.sleep(TTL_MS / 1000 + 0.05)
        listed = [httpx.get(f"{url}/v1/adapters/raced").json() for url in (a, b)]
        assert listed[0]["version"] == listed[1]["version"]
        archives = [httpx.get(f"{url}/v1/adapters/raced/download").content for url in (a, b)]
        assert archives[0] == archives[1]
        pair = [zipfile.ZipFile(io.BytesIO(archives[0])).read(n) for n in
                ("adapter_config.json", "adapter_model.safetensors")]  # fmt: skip
        assert version_id(*pair) == listed[0]["version"]
        history = httpx.get(f"{a}/v1/adapters/raced/versions").json()["data"]
        assert len(history) == 10
        x = torch.randn(2, 16)
        winner = [
            seed for seed, (c, t, _) in contents.items()
            if matches(predict(a, x, "raced"), reference_forward(base, x, c, t))
        ]  # fmt: skip
        assert len(winner) == 1
        assert matches(predict(b, x, "raced"), reference_forward(base, x, *contents[winner[0]][:2]))


def _dataset(url: str) -> str:
    data = save({"inputs": torch.randn(16, 16), "targets": torch.randn(16, 4)})
    response = httpx.post(f"{url}/v1/datasets", files={"file": ("d.safetensors", data)})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _job(url: str, name: str, dataset: str, epochs: int = 1) -> str:
    body = {
        "adapter_name": name,
        "training_dataset": dataset,
        "hyperparameters": {"rank": 1, "epochs": epochs, "batch_size": 16},
    }
    response = httpx.post(f"{url}/v1/fine-tuning/jobs", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _wait(url: str, job_id: str, *states: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = httpx.get(f"{url}/v1/fine-tuning/jobs/{job_id}").json()
        if job["status"] in states:
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.1)


def _started_on(url: str, job_id: str) -> list[str]:
    events = httpx.get(f"{url}/v1/fine-tuning/jobs/{job_id}/events?limit=100").json()["data"]
    prefix = "training started on worker "
    return [e["message"][len(prefix) :] for e in events if e["message"].startswith(prefix)]


def test_a_hundred_jobs_on_two_workers_each_run_exactly_once(
    tmp_path: Path, shared: dict[str, str]
) -> None:
    with ExitStack() as stack:
        url = stack.enter_context(api(tmp_path, "a", shared))
        dataset = _dataset(url)
        ids = [_job(url, f"j{i:03d}", dataset) for i in range(100)]
        for name in ("w1", "w2"):
            stack.enter_context(worker(tmp_path, name, shared))
        for job_id in ids:
            assert _wait(url, job_id, "succeeded", "failed")["status"] == "succeeded"
        runs = {job_id: _started_on(url, job_id) for job_id in ids}
        assert all(len(r) == 1 for r in runs.values()), runs
        assert len({r[0] for r in runs.values()}) == 2  # both workers took a share
        listed = httpx.get(f"{url}/v1/adapters").json()["data"]
        assert sorted(a["name"] for a in listed) == [f"j{i:03d}" for i in range(100)]
        for job_id in ids[:5]:
            events = httpx.get(f"{url}/v1/fine-tuning/jobs/{job_id}/events").json()["data"]
            assert sum("registered" in e["message"] for e in events) == 1


def test_a_worker_killed_mid_job_loses_only_that_job_after_its_lease(
    tmp_path: Path, shared: dict[str, str]
) -> None:
    with ExitStack() as stack:
        url = stack.enter_context(api(tmp_path, "a", shared))
        dataset = _dataset(url)
        workers = {n: stack.enter_context(worker(tmp_path, n, shared)) for n in ("w1", "w2")}
        long = _job(url, "long", dataset, epochs=100_000)
        _wait(url, long, "running")
        deadline = time.monotonic() + 30
        while not (started := _started_on(url, long)):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        victim = next(n for n, p in workers.items() if started[0].split("-")[-2] == str(p.pid))
        workers[victim].send_signal(signal.SIGKILL)
        workers[victim].wait(timeout=10)
        killed_at = time.monotonic()
        failed = _wait(url, long, "failed", "succeeded", "cancelled", timeout=30)
        assert failed["status"] == "failed" and failed["error"]["code"] == "interrupted"
        assert time.monotonic() - killed_at < LEASE_MS / 1000 + 5
        after = _job(url, "after", dataset)
        assert _wait(url, after, "succeeded", "failed")["status"] == "succeeded"
        survivor = next(n for n in workers if n != victim)
        assert _started_on(url, after)[0].split("-")[-2] == str(workers[survivor].pid)
