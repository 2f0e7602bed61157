"""A composition that costs more than COMPOSE_INLINE_MAX_FLOPS is queued as a job (202) that a
training worker runs; the adapter it registers equals the one made during a request."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from support.helpers import TINY_SIZES, adapter_files, lora_tensors, peft_config
from support.http import upload

BODY = {"sources": [{"name": "p", "scale": 0.7}, {"name": "q", "scale": 1.2}],
        "method": "ties_svd", "rank": 3, "density": 0.5}  # fmt: skip


def _sources(client: TestClient) -> None:
    for name, (r, targets, seed) in {"p": (2, ("layer1", "layer2"), 1), "q": (3, ("layer2",), 2)}.items():  # fmt: skip
        files = adapter_files(
            peft_config(r, 2.0 * r, targets), lora_tensors(TINY_SIZES, targets, r, seed)
        )
        assert upload(client, name, *files).status_code == 201


@pytest.fixture
def jobs_client(settings: Settings) -> Iterator[TestClient]:
    """Every svd composition a job; the worker polls often."""
    with TestClient(create_app(settings.model_copy(update={"compose_inline_max_flops": 0.0}))) as c:
        _sources(c)
        yield c


def _wait(client: TestClient, job_id: str) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = client.get(f"/v1/adapters/compose/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def _outputs(client: TestClient, adapter: str, x: torch.Tensor) -> torch.Tensor:
    r = client.post("/v1/predict", json={"inputs": x.tolist(), "adapter": adapter})
    assert r.status_code == 200, r.text
    return torch.tensor(r.json()["outputs"])


def test_a_large_composition_is_a_job_whose_adapter_equals_the_inline_one(
    jobs_client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    r = jobs_client.post("/v1/adapters/compose", json={"name": "mix", **BODY})
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/adapters/compose/jobs/{job['id']}"
    assert job["object"] == "composition.job" and job["adapter_name"] == "mix"
    assert [(s["name"], s["scale"]) for s in job["sources"]] == [("p", 0.7), ("q", 1.2)]
    assert job["status"] in ("queued", "running", "succeeded")
    done = _wait(jobs_client, job["id"])
    assert done["status"] == "succeeded" and done["error"] is None, done
    adapter = jobs_client.get("/v1/adapters/mix").json()
    assert adapter["source"] == "composition"
    # The same composition made during a request, on a service with the default threshold.
    own = {"adapters_dir": tmp_path / "inline-adapters", "data_dir": tmp_path / "inline-data"}
    with TestClient(create_app(settings.model_copy(update=own))) as client:
        _sources(client)
        inline = client.post("/v1/adapters/compose", json={"name": "mix", **BODY})
        assert inline.status_code == 201, inline.text
        x = torch.randn(4, TINY_SIZES[0])
        torch.testing.assert_close(_outputs(jobs_client, "mix", x), _outputs(client, "mix", x))
    # Composition jobs are not fine-tuning jobs.
    assert jobs_client.get("/v1/fine-tuning/jobs").json()["data"] == []
    assert jobs_client.get(f"/v1/fine-tuning/jobs/{job['id']}").status_code == 404


def test_cat_and_linear_never_queue(jobs_client: TestClient) -> None:
    for method, sources in (("cat", BODY["sources"]), ("linear", [{"name": "p", "scale": 0.5}])):
        body = {"name": method, "sources": sources, "method": method}
        r = jobs_client.post("/v1/adapters/compose", json=body)
        assert r.status_code == 201, r.text


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"sources": [{"name": "nope"}], "method": "svd"}, 404, "sources.0.name"),
        ({"sources": [{"name": "p"}], "method": "ties_svd"}, 422, "density"),
        ({"sources": [{"name": "p"}], "method": "svd", "rank": 65}, 422, "rank"),
        ({"name": "p", "sources": [{"name": "q"}], "method": "svd"}, 409, "name"),
    ],
)
def test_a_job_that_would_fail_its_checks_is_never_queued(
    jobs_client: TestClient, body, status, param
) -> None:
    r = jobs_client.post("/v1/adapters/compose", json={"name": "bad", **body})
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param
    count = jobs_client.app.state.services.training.jobs.count_by_status()
    assert count == {}


def test_a_second_job_for_the_same_name_is_a_conflict_and_a_queued_one_cancels(
    settings: Settings,
) -> None:
    update = {"compose_inline_max_flops": 0.0, "embedded_worker": False}
    with TestClient(create_app(settings.model_copy(update=update))) as c:
        _sources(c)
        first = c.post("/v1/adapters/compose", json={"name": "mix", **BODY})
        assert first.status_code == 202 and first.json()["status"] == "queued"
        again = c.post("/v1/adapters/compose", json={"name": "mix", **BODY})
        assert again.status_code == 409 and again.json()["error"]["param"] == "name"
        job_id = first.json()["id"]
        cancelled = c.post(f"/v1/adapters/compose/jobs/{job_id}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        assert c.get("/v1/adapters/mix").status_code == 404
        assert c.get("/v1/adapters/compose/jobs/composejob-nope").status_code == 404


def test_a_running_job_cancelled_before_it_registers_leaves_nothing(settings: Settings) -> None:
    update = {"compose_inline_max_flops": 0.0, "embedded_worker": False}
    with TestClient(create_app(settings.model_copy(update=update))) as c:
        _sources(c)
        services = c.app.state.services  # type: ignore[attr-defined]
        worker = services.training.worker  # not started: this test plays it
        job = c.post("/v1/adapters/compose", json={"name": "late", **BODY}).json()
        claimed = services.training.jobs.claim(worker.worker_id, 60_000)
        assert claimed is not None and claimed.id == job["id"] and claimed.kind == "composition"
        stop = threading.Event()
        assert c.post(f"/v1/adapters/compose/jobs/{job['id']}/cancel").json()["status"] == (
            "cancelling"
        )
        stop.set()  # what the lease's renewal does when it reads `cancelling`
        worker._compose(claimed, stop)
        assert c.get("/v1/adapters/late").status_code == 404
        done = c.get(f"/v1/adapters/compose/jobs/{job['id']}").json()
        assert done["status"] == "cancelled" and done["finished_at"] is not None
