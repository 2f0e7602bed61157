"""Fine-tuning jobs over HTTP: every state, cancel, divergence, restart, serving while training."""

from __future__ import annotations

import io
import json
import threading
import time
import zipfile
from functools import partial

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load

from app.main import create_app
from app.state import Database
from app.training import JobStore
from app.training.worker import LeaseLost
from support.helpers import reference_forward
from support.http import make_files, upload
from support.training import create, dataset, wait_for

LONG = {"epochs": 1000, "batch_size": 1}  # runs far longer than any test waits


def test_job_trains_and_registers_the_adapter(client: TestClient, settings, base_folder) -> None:
    train, val = dataset(client), dataset(client, rows=16, seed=1)
    response = create(client, "tuned", train, validation_dataset=val)
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["object"] == "fine_tuning.job" and job["status"] in ("queued", "running")
    assert job["hyperparameters"] == {
        "rank": 8, "alpha": 8.0, "target_modules": ["layer1", "layer2"], "epochs": 3,
        "batch_size": 128, "learning_rate": 0.001, "use_rslora": False, "loss": "mse", "seed": 0,
    }  # fmt: skip
    done = wait_for(client, job["id"], "succeeded", "failed")
    assert done["status"] == "succeeded", done
    assert done["error"] is None and done["started_at"] and done["finished_at"]
    assert (
        done["progress"]["epoch"] == 3
        and done["progress"]["step"] == done["progress"]["total_steps"] == 3
    )
    assert done["progress"]["validation_loss"] is not None

    adapter = client.get("/v1/adapters/tuned").json()
    assert adapter["source"] == "training" and adapter["rank"] == 8
    assert (
        adapter["version"] == client.get("/v1/adapters/tuned/versions").json()["data"][0]["version"]
    )

    events = client.get(f"/v1/fine-tuning/jobs/{job['id']}/events").json()["data"]
    metrics = [e["data"] for e in events if e["type"] == "metrics"]
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert set(metrics[0]) >= {"epoch", "step", "train_loss", "validation_loss"}
    assert events[-1]["message"] == "job succeeded"

    # Usable at once, and it computes what its files say.
    files = zipfile.ZipFile(io.BytesIO(client.get("/v1/adapters/tuned/download").content))
    weights = files.read("adapter_model.safetensors")
    tensors = load(weights)
    assert (
        json.loads(weights[8 : 8 + int.from_bytes(weights[:8], "little")])["__metadata__"]["job_id"]
        == job["id"]
    )
    x = torch.randn(3, 16)
    out = client.post("/v1/predict", json={"inputs": x.tolist(), "adapter": "tuned"}).json()
    ref = reference_forward(base_folder, x, {"lora_alpha": 8.0}, tensors)
    torch.testing.assert_close(
        torch.tensor(out["outputs"], dtype=torch.float64), ref, rtol=1e-4, atol=1e-5
    )


def test_same_seed_and_data_give_the_same_adapter(client: TestClient) -> None:
    train = dataset(client)
    hp = {"rank": 2, "epochs": 2, "batch_size": 8, "seed": 3}
    for name in ("one", "two"):
        wait_for(client, create(client, name, train, hyperparameters=hp).json()["id"], "succeeded")
    one, two = (
        load(zipfile.ZipFile(io.BytesIO(client.get(f"/v1/adapters/{n}/download").content)).read(
            "adapter_model.safetensors"
        ))
        for n in ("one", "two")
    )  # fmt: skip
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)


@pytest.mark.parametrize(
    ("hyperparameters", "param"),
    [
        ({"target_modules": ["layer3"]}, "hyperparameters.target_modules"),
        ({"rank": 65}, "hyperparameters.rank"),
        ({"rank": 0}, "hyperparameters.rank"),
        ({"learning_rate": -1}, "hyperparameters.learning_rate"),
        ({"epochs": 0}, "hyperparameters.epochs"),
        ({"loss": "l1"}, "hyperparameters.loss"),
        ({"momentum": 0.9}, "hyperparameters.momentum"),
        # Strict: nothing is coerced from another type (an int where a float goes is fine).
        ({"use_rslora": "false"}, "hyperparameters.use_rslora"),
        ({"use_rslora": 0}, "hyperparameters.use_rslora"),
        ({"rank": "8"}, "hyperparameters.rank"),
        ({"rank": 8.0}, "hyperparameters.rank"),
        ({"epochs": True}, "hyperparameters.epochs"),
        ({"learning_rate": "0.1"}, "hyperparameters.learning_rate"),
        ({"alpha": False}, "hyperparameters.alpha"),
        ({"target_modules": "layer1"}, "hyperparameters.target_modules"),
        ({"seed": 1.5}, "hyperparameters.seed"),
        ({"seed": 2**63}, "hyperparameters.seed"),
    ],
)
def test_bad_hyperparameters_are_refused_before_queueing(
    client: TestClient, hyperparameters: dict, param: str
) -> None:
    response = create(client, "x", dataset(client), hyperparameters=hyperparameters)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_input"
    assert response.json()["error"]["param"] == param
    assert client.get("/v1/fine-tuning/jobs").json()["data"] == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("learning_rate", "NaN"),
        ("learning_rate", "Infinity"),
        ("alpha", "1e400"),
        ("learning_rate", "1" + "0" * 400),  # an integer too big for a float
        ("rank", "1" + "0" * 400),
    ],
)
def test_non_finite_and_overflowing_hyperparameters_are_422(
    client: TestClient, field: str, value: str
) -> None:
    raw = (
        f'{{"adapter_name": "x", "training_dataset": "{dataset(client)}",'
        f' "hyperparameters": {{"{field}": {value}}}}}'
    )
    response = client.post(
        "/v1/fine-tuning/jobs", content=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_input" and error["param"] == f"hyperparameters.{field}"
    assert len(error["message"]) < 300  # the 401-digit number is not echoed in full
    assert client.get("/v1/fine-tuning/jobs").json()["data"] == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"adapter_name": 5}, "adapter_name"),
        ({"validation_dataset": ["ds"]}, "validation_dataset"),
        ({"hyperparameters": None}, "hyperparameters"),
        ({"suffix": "x"}, "suffix"),
    ],
)
def test_job_fields_of_the_wrong_type_are_422(client: TestClient, body: dict, param: str) -> None:
    response = client.post(
        "/v1/fine-tuning/jobs",
        json={"adapter_name": "x", "training_dataset": dataset(client), **body},
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_input" and error["param"] == param


def test_integers_are_accepted_where_floats_go(client: TestClient) -> None:
    hp = {"learning_rate": 1, "alpha": 4, "epochs": 1}
    response = create(client, "ints", dataset(client), hyperparameters=hp)
    assert response.status_code == 201, response.text
    resolved = response.json()["hyperparameters"]
    assert resolved["learning_rate"] == 1.0 and resolved["alpha"] == 4.0
    wait_for(client, response.json()["id"], "succeeded", "failed")


def test_deeply_nested_json_is_400_not_500(client: TestClient) -> None:
    raw = b'{"adapter_name": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"
    response = client.post(
        "/v1/fine-tuning/jobs", content=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_json"


def test_refusals_for_names_and_datasets(client: TestClient) -> None:
    train = dataset(client)
    response = create(client, "../x", train)
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_name"
    response = create(client, "x", "ds-missing")
    assert response.status_code == 404 and response.json()["error"]["param"] == "training_dataset"
    assert response.json()["error"]["code"] == "dataset_not_found"
    response = create(client, "x", train, validation_dataset="ds-missing")
    assert response.status_code == 404 and response.json()["error"]["param"] == "validation_dataset"
    assert response.json()["error"]["code"] == "dataset_not_found"
    wait_for(
        client,
        create(client, "taken", train, hyperparameters={"epochs": 1}).json()["id"],
        "succeeded",
    )
    response = create(client, "taken", train)
    assert response.status_code == 409 and response.json()["error"]["code"] == "adapter_exists"
    assert len(client.get("/v1/fine-tuning/jobs").json()["data"]) == 1


def test_cancel_queued_and_running_jobs_registers_nothing(client: TestClient) -> None:
    train = dataset(client, rows=256)
    running = create(client, "long", train, hyperparameters=LONG).json()
    wait_for(client, running["id"], "running")
    queued = create(client, "next", train).json()
    busy = create(client, "long", train)  # that name is being trained
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "adapter_exists"
    response = client.post(f"/v1/fine-tuning/jobs/{queued['id']}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    response = client.post(f"/v1/fine-tuning/jobs/{running['id']}/cancel")
    assert response.json()["status"] in ("cancelling", "cancelled")
    done = wait_for(client, running["id"], "cancelled")
    assert done["finished_at"] is not None and done["error"] is None
    assert client.get("/v1/adapters").json()["data"] == []
    again = client.post(f"/v1/fine-tuning/jobs/{running['id']}/cancel")
    assert again.status_code == 409 and again.json()["error"]["code"] == "job_not_cancellable"


def test_a_diverging_job_fails_and_registers_nothing(client: TestClient) -> None:
    job = create(client, "boom", dataset(client, scale=1e30)).json()
    done = wait_for(client, job["id"], "failed", "succeeded")
    assert done["status"] == "failed" and done["error"]["code"] == "diverged"
    response = client.get("/v1/adapters/boom")
    assert response.status_code == 404 and response.json()["error"]["code"] == "adapter_not_found"


def test_predictions_are_served_while_a_job_trains(client: TestClient, base_folder) -> None:
    job = create(client, "long", dataset(client, rows=256), hyperparameters=LONG).json()
    wait_for(client, job["id"], "running")
    x = torch.randn(4, 16)
    ref = reference_forward(base_folder, x)
    for _ in range(20):
        response = client.post("/v1/predict", json={"inputs": x.tolist()})
        assert response.status_code == 200
        torch.testing.assert_close(
            torch.tensor(response.json()["outputs"], dtype=torch.float64), ref, rtol=1e-5, atol=1e-5
        )
    progress = client.get(f"/v1/fine-tuning/jobs/{job['id']}").json()
    assert progress["status"] == "running" and progress["progress"]["step"] > 0
    client.post(f"/v1/fine-tuning/jobs/{job['id']}/cancel")
    wait_for(client, job["id"], "cancelled")


def test_a_dataset_in_use_cannot_be_deleted(client: TestClient) -> None:
    train = dataset(client, rows=256)
    job = create(client, "long", train, hyperparameters=LONG).json()
    response = client.delete(f"/v1/datasets/{train}")
    assert response.status_code == 409 and response.json()["error"]["code"] == "dataset_in_use"
    client.post(f"/v1/fine-tuning/jobs/{job['id']}/cancel")
    wait_for(client, job["id"], "cancelled")
    assert client.delete(f"/v1/datasets/{train}").status_code == 204


def test_after_a_restart_lapsed_leases_are_interrupted_live_ones_kept_queued_ones_run(
    settings,
) -> None:
    with TestClient(create_app(settings)) as client:
        train = dataset(client)
    # What a killed process leaves: a job under a lapsed lease, and one still queued; another
    # process, alive, holds a third job under a lease it keeps renewing.
    db = Database(settings.database)
    store = JobStore(db)
    hp = {"rank": 2, "alpha": 2.0, "target_modules": ["layer1"], "epochs": 1, "batch_size": 8,
          "learning_rate": 1e-3, "use_rslora": False, "loss": "mse", "seed": 0}  # fmt: skip
    progress = {"epoch": 0, "epochs": 1, "step": 0, "total_steps": 8,
                "train_loss": None, "validation_loss": None}  # fmt: skip
    store.create("dead", train, None, hp, progress)
    store.create("elsewhere", train, None, hp, progress)
    dead, elsewhere = store.claim("w-dead", 1), store.claim("w-alive", 3_600_000)
    assert dead and elsewhere
    waiting = store.create("waiting", train, None, hp, progress)
    db.close()
    with TestClient(create_app(settings)) as client:
        assert wait_for(client, dead.id, "failed")["error"]["code"] == "interrupted"
        assert wait_for(client, waiting.id, "succeeded")["status"] == "succeeded"
        kept = client.get(f"/v1/fine-tuning/jobs/{elsewhere.id}").json()
        assert kept["status"] == "running"  # another live process's work is never touched
        response = client.get("/v1/adapters/dead")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "adapter_not_found"
        assert client.get("/v1/adapters/waiting").json()["source"] == "training"


def test_list_jobs_pages_and_unknown_ids_are_404(client: TestClient) -> None:
    train = dataset(client)
    ids = [
        create(client, f"a{i}", train, hyperparameters={"epochs": 1}).json()["id"] for i in range(3)
    ]
    page = client.get("/v1/fine-tuning/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in page["data"]] == ids[::-1][:2] and page["has_more"]
    rest = client.get("/v1/fine-tuning/jobs", params={"limit": 2, "after": ids[1]}).json()
    assert [j["id"] for j in rest["data"]] == [ids[0]] and not rest["has_more"]
    for path in ("", "/events"):
        response = client.get(f"/v1/fine-tuning/jobs/ftjob-nope{path}")
        assert response.status_code == 404 and response.json()["error"]["code"] == "job_not_found"
    response = client.post("/v1/fine-tuning/jobs/ftjob-nope/cancel")
    assert response.status_code == 404 and response.json()["error"]["code"] == "job_not_found"
    for job_id in ids:
        wait_for(client, job_id, "succeeded")


@pytest.mark.parametrize(
    "after",
    ["event-9223372036854775808", "event-" + "9" * 5000, "event-x", "ftjob-nope", "event-999"],
)
def test_a_cursor_that_names_nothing_in_the_list_is_422_on_both_routes(
    client: TestClient, after: str
) -> None:
    """The same mistake gets the same answer on every route that takes a cursor."""
    job = create(client, "a", dataset(client), hyperparameters={"epochs": 1}).json()
    for path in ("", f"/{job['id']}/events"):
        response = client.get(f"/v1/fine-tuning/jobs{path}", params={"after": after})
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "invalid_cursor" and error["param"] == "after"
        assert len(error["message"]) < 200  # a long cursor is not echoed back in full
    wait_for(client, job["id"], "succeeded")


def create_and_delete_at_once(
    client: TestClient, name: str, train: str, other: TestClient | None = None
) -> tuple[int, int]:
    """(create's status, delete's status), the two requests released together (the delete
    through `other`, another replica, when given)."""
    barrier = threading.Barrier(2)
    answers: dict[str, int] = {}

    def create_job() -> None:
        barrier.wait()
        answers["create"] = create(client, name, train).status_code

    def delete_dataset() -> None:
        barrier.wait()
        answers["delete"] = (other or client).delete(f"/v1/datasets/{train}").status_code

    threads = [threading.Thread(target=f) for f in (create_job, delete_dataset)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers["create"], answers["delete"]


def test_creating_a_job_while_deleting_its_dataset_never_both_succeed(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Either the job is queued and the delete refused, or the dataset is gone and the job too."""
    training = client.app.state.services.training  # type: ignore[attr-defined]
    training.worker.stop()  # queued jobs stay queued, so their dataset stays in use
    with_status = training.jobs.with_status

    def slow_with_status(*statuses: str, **kw):
        time.sleep(0.002)  # widens the window between each side's check and its write
        return with_status(*statuses, **kw)

    monkeypatch.setattr(training.jobs, "with_status", slow_with_status)
    outcomes = [
        create_and_delete_at_once(client, f"race{i}", dataset(client, 8, seed=i)) for i in range(12)
    ]
    assert set(outcomes) <= {(201, 409), (404, 204)}, outcomes


def test_a_job_with_use_rslora_trains_an_rslora_adapter(client: TestClient, base_folder) -> None:
    hp = {"rank": 4, "alpha": 8, "epochs": 2, "batch_size": 16, "use_rslora": True}
    job = create(client, "rs", dataset(client), hyperparameters=hp).json()
    assert job["hyperparameters"]["use_rslora"] is True
    assert wait_for(client, job["id"], "succeeded", "failed")["status"] == "succeeded"
    adapter = client.get("/v1/adapters/rs").json()
    assert adapter["use_rslora"] is True
    assert adapter["scaling"] == pytest.approx(8 / 4**0.5)  # alpha / sqrt(r), not alpha / r
    files = zipfile.ZipFile(io.BytesIO(client.get("/v1/adapters/rs/download").content))
    assert json.loads(files.read("adapter_config.json"))["use_rslora"] is True
    weights = files.read("adapter_model.safetensors")
    tensors = load(weights)
    assert (
        json.loads(weights[8 : 8 + int.from_bytes(weights[:8], "little")])["__metadata__"]["job_id"]
        == job["id"]
    )
    x = torch.randn(3, 16)
    out = client.post("/v1/predict", json={"inputs": x.tolist(), "adapter": "rs"}).json()
    ref = reference_forward(base_folder, x, {"lora_alpha": 8.0, "use_rslora": True}, tensors)
    torch.testing.assert_close(
        torch.tensor(out["outputs"], dtype=torch.float64), ref, rtol=1e-4, atol=1e-5
    )


def test_an_adapter_is_registered_only_together_with_its_job_s_success(settings) -> None:
    """A job cancelled (or whose lease lapsed) at the last moment registers nothing."""
    with TestClient(create_app(settings)) as client:
        train = dataset(client)
        services = client.app.state.services  # type: ignore[attr-defined]
        services.training.stop()  # no worker but the one this test plays
        worker = services.training.worker
        job = create(client, "late", train, hyperparameters={"epochs": 1}).json()
        claimed = services.training.jobs.claim(worker.worker_id, 60_000)
        assert claimed is not None and claimed.id == job["id"]
        donor = upload(client, "donor", *make_files()[2]).json()["version"]
        adapter = services.registry.load(donor, "adapter")[1]
        client.post(f"/v1/fine-tuning/jobs/{job['id']}/cancel")
        with pytest.raises(LeaseLost):
            services.registry.add(
                "late", adapter, source="training", within=partial(worker._succeed, claimed)
            )
        assert client.get("/v1/adapters/late").status_code == 404
        assert client.get(f"/v1/fine-tuning/jobs/{job['id']}").json()["status"] == "cancelling"


def test_two_replicas_creating_a_job_and_deleting_its_dataset_never_both_succeed(
    settings, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two apps on one database share no lock but the project's row: it must be enough."""
    shared = type(settings)(**{**settings.model_dump(), "database_url": database_url})
    with TestClient(create_app(shared)) as a, TestClient(create_app(shared)) as b:
        for client in (a, b):
            training = client.app.state.services.training  # type: ignore[attr-defined]
            training.worker.stop()
            with_status = training.jobs.with_status

            def slow(*statuses: str, _with_status=with_status, **kw):
                time.sleep(0.002)  # widens the window between each side's check and its write
                return _with_status(*statuses, **kw)

            monkeypatch.setattr(training.jobs, "with_status", slow)
        outcomes = [
            create_and_delete_at_once(a, f"race{i}", dataset(a, 8, seed=i), other=b)
            for i in range(8)
        ]
    assert set(outcomes) <= {(201, 409), (404, 204)}, outcomes
