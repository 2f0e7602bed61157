"""Datasets over HTTP: safetensors or JSON in, checked against the base model's widths."""

from __future__ import annotations

import torch
from fastapi.testclient import TestClient
from safetensors.torch import save


def upload(client: TestClient, tensors: dict[str, torch.Tensor], filename: str = "d.safetensors"):
    return client.post("/v1/datasets", files={"file": (filename, save(tensors))})


def test_create_dataset_from_a_safetensors_file(client: TestClient, settings) -> None:
    response = upload(client, {"inputs": torch.randn(10, 16), "targets": torch.randn(10, 4)})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["rows"] == 10 and body["input_dim"] == 16 and body["output_dim"] == 4
    assert body["filename"] == "d.safetensors"
    assert (settings.data_dir / "datasets" / f"{body['id']}.safetensors").is_file()
    assert client.get(f"/v1/datasets/{body['id']}").json() == body
    assert [d["id"] for d in client.get("/v1/datasets").json()["data"]] == [body["id"]]


def test_create_dataset_from_json(client: TestClient) -> None:
    body = {"inputs": [[0.5] * 16] * 3, "targets": [[1.0] * 4] * 3}
    response = client.post("/v1/datasets", json=body)
    assert response.status_code == 201, response.text
    assert response.json()["rows"] == 3


def test_half_precision_datasets_are_accepted(client: TestClient) -> None:
    tensors = {"inputs": torch.randn(4, 16).half(), "targets": torch.randn(4, 4).bfloat16()}
    assert upload(client, tensors).status_code == 201


def test_width_mismatch_is_422_naming_it(client: TestClient) -> None:
    response = upload(client, {"inputs": torch.randn(10, 15), "targets": torch.randn(10, 4)})
    assert response.status_code == 422
    assert response.json()["error"]["message"] == (
        "`inputs` has shape (10, 15); the base model needs (N, 16)"
    )
    response = upload(client, {"inputs": torch.randn(10, 16), "targets": torch.randn(10, 5)})
    assert response.status_code == 422 and "(N, 4)" in response.json()["error"]["message"]
    assert client.get("/v1/datasets").json()["data"] == []


def test_bad_datasets_are_refused(client: TestClient) -> None:
    nan = torch.randn(3, 16)
    nan[1, 1] = float("nan")
    cases = [
        {"inputs": torch.randn(3, 16), "targets": torch.randn(4, 4)},
        {"inputs": nan, "targets": torch.randn(3, 4)},
        {"inputs": torch.randn(3, 16)},
        {"inputs": torch.randn(3, 16), "targets": torch.randn(3, 4), "extra": torch.ones(1)},
        {"inputs": torch.zeros(3, 16, dtype=torch.int64), "targets": torch.randn(3, 4)},
    ]
    for tensors in cases:
        response = upload(client, tensors)
        assert response.status_code == 422, tensors.keys()
        assert response.json()["error"]["code"] == "invalid_input"
    truncated = save({"inputs": torch.randn(3, 16), "targets": torch.randn(3, 4)})[:50]
    response = client.post("/v1/datasets", files={"file": ("d", truncated)})
    assert response.status_code == 422
    ragged = client.post(
        "/v1/datasets", json={"inputs": [[0.0] * 16, [0.0]], "targets": [[0.0] * 4] * 2}
    )
    assert ragged.status_code == 422
    assert client.get("/v1/datasets").json()["data"] == []


def test_too_many_rows_is_413(settings) -> None:
    from app.main import create_app

    with TestClient(create_app(settings.model_copy(update={"max_dataset_rows": 5}))) as client:
        response = upload(client, {"inputs": torch.randn(6, 16), "targets": torch.randn(6, 4)})
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "dataset_too_large"


def test_wrong_content_type_is_415(client: TestClient) -> None:
    response = client.post("/v1/datasets", content=b"x", headers={"content-type": "text/plain"})
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"


def test_read_and_delete_dataset_not_found(client: TestClient) -> None:
    assert client.get("/v1/datasets/ds-nope").status_code == 404
    response = client.delete("/v1/datasets/ds-nope")
    assert response.status_code == 404 and response.json()["error"]["code"] == "dataset_not_found"


def test_delete_dataset(client: TestClient, settings) -> None:
    dataset_id = upload(
        client, {"inputs": torch.randn(2, 16), "targets": torch.randn(2, 4)}
    ).json()["id"]
    assert client.delete(f"/v1/datasets/{dataset_id}").status_code == 204
    assert client.get(f"/v1/datasets/{dataset_id}").status_code == 404
    assert not (settings.data_dir / "datasets" / f"{dataset_id}.safetensors").exists()


def test_datasets_survive_a_restart(settings) -> None:
    from app.main import create_app

    with TestClient(create_app(settings)) as client:
        created = upload(
            client, {"inputs": torch.randn(2, 16), "targets": torch.randn(2, 4)}
        ).json()
    with TestClient(create_app(settings)) as client:
        assert client.get(f"/v1/datasets/{created['id']}").json() == created
