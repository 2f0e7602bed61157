"""Projects (tenants): keys made by a super-admin, isolation on every route, quotas."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save

from app.main import create_app
from app.state import Database
from app.state.projects import key_hash
from app.state.tables import api_keys
from support.http import make_files

SUPER = "super-secret"
MISSING = {
    "name": "nope",
    "dataset_id": "ds-000000000000000000000000",
    "job_id": "ftjob-000000000000000000000000",
}


@pytest.fixture
def app_client(settings) -> Iterator[TestClient]:
    keyed = type(settings)(**{**settings.model_dump(), "super_admin_keys": SUPER})
    with TestClient(create_app(keyed)) as client:
        yield client


def as_key(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def new_project(client: TestClient, name: str, **quotas: int) -> tuple[str, str]:
    """(project id, an admin key of it)."""
    response = client.post("/v1/projects", json={"name": name, **quotas}, headers=as_key(SUPER))
    assert response.status_code == 201, response.text
    project = response.json()["id"]
    key = client.post(f"/v1/projects/{project}/keys", json={"role": "admin"}, headers=as_key(SUPER))
    assert key.status_code == 201, key.text
    return project, key.json()["key"]


def upload(client: TestClient, key: str, name: str, seed: int = 0):
    _, _, (config, weights) = make_files(seed=seed)
    return client.post(
        "/v1/adapters",
        data={"name": name},
        files={"config": ("c", config), "weights": ("w", weights)},
        headers=as_key(key),
    )


def dataset(client: TestClient, key: str) -> str:
    data = save({"inputs": torch.randn(16, 16), "targets": torch.randn(16, 4)})
    response = client.post("/v1/datasets", files={"file": ("d", data)}, headers=as_key(key))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_keys_are_shown_once_and_stored_hashed(app_client: TestClient, settings) -> None:
    project, key = new_project(app_client, "alpha")
    listed = app_client.get(f"/v1/projects/{project}/keys", headers=as_key(SUPER)).json()["data"]
    assert len(listed) == 1 and "key" not in listed[0] and listed[0]["role"] == "admin"
    db = Database(settings.database)
    with db.read() as conn:
        rows = conn.execute(sa.select(api_keys)).all()
    db.close()
    assert [r.key_hash for r in rows] == [key_hash(key)]
    assert all(key not in str(tuple(r)) for r in rows)
    assert app_client.get("/v1/adapters", headers=as_key(key)).status_code == 200


def test_a_revoked_key_stops_working(app_client: TestClient) -> None:
    project, key = new_project(app_client, "alpha")
    key_id = app_client.get(f"/v1/projects/{project}/keys", headers=as_key(SUPER)).json()["data"][
        0
    ]["id"]
    gone = app_client.delete(f"/v1/projects/{project}/keys/{key_id}", headers=as_key(SUPER))
    assert gone.status_code == 204
    response = app_client.get("/v1/adapters", headers=as_key(key))
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"


def test_an_api_key_of_a_project_may_read_but_not_write(app_client: TestClient) -> None:
    project, admin = new_project(app_client, "alpha")
    api = app_client.post(
        f"/v1/projects/{project}/keys", json={"role": "api"}, headers=as_key(SUPER)
    ).json()["key"]
    assert upload(app_client, admin, "a").status_code == 201
    assert app_client.get("/v1/adapters/a", headers=as_key(api)).status_code == 200
    assert upload(app_client, api, "b").status_code == 403


def test_the_same_name_in_two_projects_is_two_adapters(app_client: TestClient) -> None:
    _, a = new_project(app_client, "alpha")
    _, b = new_project(app_client, "beta")
    assert upload(app_client, a, "same", seed=1).status_code == 201
    assert upload(app_client, b, "same", seed=2).status_code == 201
    x = torch.randn(2, 16).tolist()
    outputs = [
        app_client.post(
            "/v1/predict", json={"inputs": x, "adapter": "same"}, headers=as_key(k)
        ).json()["outputs"]
        for k in (a, b)
    ]
    assert outputs[0] != outputs[1]
    both = app_client.post(
        "/v1/predict", json={"inputs": x, "adapters": ["same", "same"]}, headers=as_key(a)
    )
    assert both.json()["outputs"] == outputs[0]


def _normalized(response, value: str) -> tuple:
    body = response.json()
    error = body.get("error", {})
    message = re.sub(re.escape(value), "<id>", str(error.get("message", "")))
    return response.status_code, error.get("code"), error.get("param"), message


def test_another_projects_resources_answer_exactly_as_missing_ones_on_every_route(
    app_client: TestClient,
) -> None:
    _, a = new_project(app_client, "alpha")
    _, b = new_project(app_client, "beta")
    assert upload(app_client, a, "theirs").status_code == 201
    data = dataset(app_client, a)
    job = app_client.post(
        "/v1/fine-tuning/jobs",
        json={
            "adapter_name": "trained",
            "training_dataset": data,
            "hyperparameters": {"epochs": 100_000, "batch_size": 1},
        },
        headers=as_key(a),
    ).json()["id"]
    theirs = {"name": "theirs", "dataset_id": data, "job_id": job}
    schema = app_client.get("/openapi.json", headers=as_key(SUPER)).json()
    checked = 0
    for path, ops in schema["paths"].items():
        params = re.findall(r"\{([^}]+)\}", path)
        if not params or path.startswith("/v1/projects"):
            continue
        for method in ops:
            answers = []
            for values in (theirs, MISSING):
                url = path
                for p in params:
                    url = url.replace("{" + p + "}", values[p])
                response = app_client.request(method.upper(), url, headers=as_key(b))
                answers.append(_normalized(response, values[params[0]]))
            assert answers[0] == answers[1], (method, path, answers)
            assert answers[0][0] in (404, 422), (method, path, answers)
            checked += 1
    assert checked >= 8
    # Lists show none of A's; bodies that name A's resources answer as for missing ones.
    for path in ("/v1/adapters", "/v1/datasets", "/v1/fine-tuning/jobs"):
        assert app_client.get(path, headers=as_key(b)).json()["data"] == []
    x = torch.randn(1, 16).tolist()
    for field, value in (("adapter", "theirs"), ("adapters", ["theirs"])):
        answers = [
            _normalized(
                app_client.post("/v1/predict", json={"inputs": x, field: v}, headers=as_key(b)),
                "theirs" if v == value else "nope",
            )
            for v in (value, ["nope"] if isinstance(value, list) else "nope")
        ]
        assert answers[0] == answers[1] and answers[0][:2] == (404, "adapter_not_found")
    answers = [
        _normalized(
            app_client.post(
                "/v1/fine-tuning/jobs",
                json={"adapter_name": "mine", "training_dataset": d},
                headers=as_key(b),
            ),
            d,
        )
        for d in (data, MISSING["dataset_id"])
    ]
    assert answers[0] == answers[1] and answers[0][:2] == (404, "dataset_not_found")
    app_client.post(f"/v1/fine-tuning/jobs/{job}/cancel", headers=as_key(a))


def test_quotas_answer_in_the_envelope(app_client: TestClient) -> None:
    project, key = new_project(app_client, "small", max_adapters=1)
    app_client.app.state.services.training.worker.stop()  # type: ignore[attr-defined]
    assert upload(app_client, key, "one").status_code == 201
    response = upload(app_client, key, "two", seed=1)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_many_adapters"
    _, key = new_project(app_client, "queue", max_queued_jobs=1)
    data = dataset(app_client, key)
    body = {"adapter_name": "j1", "training_dataset": data}
    assert (
        app_client.post("/v1/fine-tuning/jobs", json=body, headers=as_key(key)).status_code == 201
    )
    body["adapter_name"] = "j2"
    response = app_client.post("/v1/fine-tuning/jobs", json=body, headers=as_key(key))
    assert response.status_code == 429 and response.json()["error"]["code"] == "too_many_requests"
    _, tiny = new_project(app_client, "tiny", max_stored_bytes=100)
    response = upload(app_client, tiny, "big")
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "storage_quota_exceeded"
    assert project.startswith("proj-")


def test_project_routes_are_for_the_super_admin_and_check_their_input(
    app_client: TestClient,
) -> None:
    response = app_client.post("/v1/projects", json={"name": ""}, headers=as_key(SUPER))
    assert response.status_code == 422
    new_project(app_client, "dup")
    response = app_client.post("/v1/projects", json={"name": "dup"}, headers=as_key(SUPER))
    assert response.status_code == 409 and response.json()["error"]["code"] == "project_exists"
    response = app_client.get("/v1/projects/proj-nope", headers=as_key(SUPER))
    assert response.status_code == 404 and response.json()["error"]["code"] == "project_not_found"
    names = [
        p["name"] for p in app_client.get("/v1/projects", headers=as_key(SUPER)).json()["data"]
    ]
    assert names == ["default", "dup"]
