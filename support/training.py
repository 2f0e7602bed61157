"""Training jobs over HTTP: datasets, jobs and waiting for them; text pairs to train on."""

from __future__ import annotations

import time

import torch
from fastapi.testclient import TestClient
from safetensors.torch import save


def dataset(client: TestClient, rows: int = 64, scale: float = 1.0, seed: int = 0) -> str:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 16, generator=gen) * scale
    y = torch.randn(rows, 4, generator=gen)
    response = client.post("/v1/datasets", files={"file": ("d", save({"inputs": x, "targets": y}))})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def create(client: TestClient, name: str, train: str, **kw):
    body = {"adapter_name": name, "training_dataset": train, **kw}
    return client.post("/v1/fine-tuning/jobs", json=body)


def wait_for(client: TestClient, job_id: str, *statuses: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/fine-tuning/jobs/{job_id}").json()
        if job["status"] in statuses:
            return dict(job)
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} never reached {statuses}: {job}")


WORDS = ["apple", "river", "stone", "cloud", "piano", "tiger", "lemon", "glass"]


PAIRS = [{"anchor": f"code {w}", "positive": f"the word {w}"} for w in WORDS]
