"""Datasets over HTTP: safetensors or JSON in, checked against the base model's widths."""

from __future__ import annotations

import asyncio

import pytest
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
    stored = settings.adapters_dir / ".store" / "default" / "datasets" / body["id"]
    assert stored.is_file()
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
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_input"
    assert response.json()["error"]["param"] == "inputs"
    assert response.json()["error"]["message"] == (
        "`inputs` has shape (10, 15); the base model needs (N, 16)"
    )
    response = upload(client, {"inputs": torch.randn(10, 16), "targets": torch.randn(10, 5)})
    assert response.status_code == 422 and "(N, 4)" in response.json()["error"]["message"]
    assert response.json()["error"]["code"] == "invalid_input"
    assert response.json()["error"]["param"] == "targets"
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
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_input"
    ragged = client.post(
        "/v1/datasets", json={"inputs": [[0.0] * 16, [0.0]], "targets": [[0.0] * 4] * 2}
    )
    assert ragged.status_code == 422 and ragged.json()["error"]["code"] == "invalid_input"
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
    response = client.get("/v1/datasets/ds-nope")
    assert response.status_code == 404 and response.json()["error"]["code"] == "dataset_not_found"
    response = client.delete("/v1/datasets/ds-nope")
    assert response.status_code == 404 and response.json()["error"]["code"] == "dataset_not_found"


def test_delete_dataset(client: TestClient, settings) -> None:
    dataset_id = upload(
        client, {"inputs": torch.randn(2, 16), "targets": torch.randn(2, 4)}
    ).json()["id"]
    assert client.delete(f"/v1/datasets/{dataset_id}").status_code == 204
    response = client.get(f"/v1/datasets/{dataset_id}")
    assert response.status_code == 404 and response.json()["error"]["code"] == "dataset_not_found"
    assert not (settings.data_dir / "datasets" / f"{dataset_id}.safetensors").exists()


def test_datasets_survive_a_restart(settings) -> None:
    from app.main import create_app

    with TestClient(create_app(settings)) as client:
        created = upload(
            client, {"inputs": torch.randn(2, 16), "targets": torch.randn(2, 4)}
        ).json()
    with TestClient(create_app(settings)) as client:
        assert client.get(f"/v1/datasets/{created['id']}").json() == created


def json_body(value: str, key: str = "inputs") -> bytes:
    """Two rows of a JSON dataset with `value` (raw JSON text) as one number of `key`."""
    width = 16 if key == "inputs" else 4
    rows = {k: [["0.5"] * w for _ in range(2)] for k, w in (("inputs", 16), ("targets", 4))}
    rows[key][1][width - 1] = value
    text = ", ".join(
        f'"{k}": [{", ".join("[" + ", ".join(r) + "]" for r in v)}]' for k, v in rows.items()
    )
    return ("{" + text + "}").encode()


def post_json(client: TestClient, raw: bytes):
    return client.post("/v1/datasets", content=raw, headers={"content-type": "application/json"})


@pytest.mark.parametrize("key", ["inputs", "targets"])
@pytest.mark.parametrize("value", ['"1.5"', "true", "false", "null", "[]", "{}", '"NaN"'])
def test_json_values_that_are_not_numbers_are_422(client: TestClient, key: str, value: str) -> None:
    response = post_json(client, json_body(value, key))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_input"
    assert response.json()["error"]["param"] == key
    assert client.get("/v1/datasets").json()["data"] == []


@pytest.mark.parametrize(
    "value",
    ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1" + "0" * 400, "1e39", "-3.5e38"],
)
def test_json_numbers_that_are_not_finite_floats_are_422(client: TestClient, value: str) -> None:
    """NaN and Infinity are not JSON; 1e400 and its integer spelling overflow a double; 1e39
    overflows the float32 the dataset is stored in."""
    response = post_json(client, json_body(value))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_input"
    assert client.get("/v1/datasets").json()["data"] == []


def test_json_integers_are_numbers(client: TestClient) -> None:
    response = client.post(
        "/v1/datasets", json={"inputs": [[1] * 16] * 2, "targets": [[-2] * 4] * 2}
    )
    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"[" * 100_000 + b"]" * 100_000, 400, "invalid_json"),
        (
            b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b', "targets": [[0, 0, 0, 0]]}',
            400,
            "invalid_json",
        ),
        (b'{"inputs": [[[[[0.5]]]]], "targets": [[0, 0, 0, 0]]}', 422, "invalid_input"),
        (b'{"inputs": [[0.5]', 400, "invalid_json"),
        (b"[1, 2]", 422, "invalid_input"),
    ],
)
def test_malformed_and_deeply_nested_json_is_refused(
    client: TestClient, raw: bytes, status: int, code: str
) -> None:
    response = post_json(client, raw)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"inputs": [[0.5] * 16], "targets": [[0.5] * 4], "inputz": []}, "inputz"),
        ({"inputs": [[0.5] * 16]}, "targets"),
        ({"inputs": [[0.5] * 16, [0.5] * 15], "targets": [[0.5] * 4] * 2}, "inputs"),
        ({"inputs": [], "targets": []}, "inputs"),
        ({"inputs": "0.5", "targets": [[0.5] * 4]}, "inputs"),
    ],
)
def test_json_fields_unknown_missing_or_misshapen_are_422(
    client: TestClient, body: dict, param: str
) -> None:
    response = client.post("/v1/datasets", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_input" and error["param"] == param


def test_json_datasets_are_parsed_off_the_event_loop(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A big JSON body costs seconds to parse: the event loop must keep serving meanwhile."""
    from app.api.routes import datasets as route

    parse, loops = route._json_tensors, []

    def spy(raw: bytes) -> dict[str, torch.Tensor]:
        try:
            loops.append(asyncio.get_running_loop())
        except RuntimeError:
            loops.append(None)
        return parse(raw)

    monkeypatch.setattr(route, "_json_tensors", spy)
    body = {"inputs": [[0.5] * 16] * 3, "targets": [[1.0] * 4] * 3}
    assert client.post("/v1/datasets", json=body).status_code == 201
    assert loops == [None]


@pytest.mark.parametrize(
    ("data", "extra_files", "param"),
    [
        ({"name": "x"}, {}, "name"),
        ({}, {"other": ("o", b"x")}, "other"),
    ],
)
def test_multipart_fields_other_than_file_are_refused(
    client: TestClient, data: dict, extra_files: dict, param: str
) -> None:
    tensors = save({"inputs": torch.randn(2, 16), "targets": torch.randn(2, 4)})
    response = client.post("/v1/datasets", data=data, files={"file": ("d", tensors), **extra_files})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_input" and error["param"] == param
    assert client.get("/v1/datasets").json()["data"] == []


def test_multipart_needs_exactly_one_file_named_file(client: TestClient) -> None:
    tensors = save({"inputs": torch.randn(2, 16), "targets": torch.randn(2, 4)})
    for kwargs in (
        {"files": {"file": (None, "not a file")}},  # a text field, not a file
        {"files": [("file", ("a", tensors)), ("file", ("b", tensors))]},
        {"files": {"weights": ("d", tensors)}},
    ):
        response = client.post("/v1/datasets", **kwargs)  # type: ignore[arg-type]
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "invalid_input"
    assert client.get("/v1/datasets").json()["data"] == []
