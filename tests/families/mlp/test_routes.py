"""Predictions over HTTP against the longhand reference."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from support.helpers import reference_forward
from support.http import make_files, upload


def _x(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, 16, generator=torch.Generator().manual_seed(seed))


def _predict(client: TestClient, **body):
    return client.post("/v1/predict", json=body)


def test_predict_without_adapter_is_the_base(client: TestClient, base_folder: Path) -> None:
    x = _x(3)
    response = _predict(client, inputs=x.tolist())
    assert response.status_code == 200
    out = torch.tensor(response.json()["outputs"], dtype=torch.float64)
    torch.testing.assert_close(out, reference_forward(base_folder, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["unmerged", "merged", "auto"])
@pytest.mark.parametrize("r", [1, 8, 64])
def test_predict_with_adapter_matches_longhand(
    client: TestClient, base_folder: Path, mode: str, r: int
) -> None:
    config, tensors, files = make_files(r=r, seed=r)
    upload(client, "a", *files)
    x = _x(5)
    response = _predict(client, inputs=x.tolist(), adapter="a", mode=mode)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["mode"] == ("unmerged" if mode == "auto" else mode)
    ref = reference_forward(base_folder, x, config, tensors)
    torch.testing.assert_close(
        torch.tensor(body["outputs"], dtype=torch.float64), ref, rtol=1e-4, atol=1e-5
    )


def test_auto_uses_a_merged_copy_once_one_exists(client: TestClient) -> None:
    upload(client, "a", *make_files()[2])
    x = _x(2).tolist()
    assert _predict(client, inputs=x, adapter="a", mode="merged").json()["mode"] == "merged"
    assert client.get("/v1/adapters/a").json()["merged"] is True
    assert client.get("/v1/adapters/a").json()["residency"] == "device"
    assert _predict(client, inputs=x, adapter="a").json()["mode"] == "merged"


def test_overwrite_drops_the_stale_merged_copy(client: TestClient, base_folder: Path) -> None:
    upload(client, "a", *make_files(seed=1)[2])
    x = _x(2)
    _predict(client, inputs=x.tolist(), adapter="a", mode="merged")
    config, tensors, files = make_files(seed=2)
    upload(client, "a", *files, overwrite=True)
    body = _predict(client, inputs=x.tolist(), adapter="a").json()
    assert body["mode"] == "unmerged"
    ref = reference_forward(base_folder, x, config, tensors)
    torch.testing.assert_close(
        torch.tensor(body["outputs"], dtype=torch.float64), ref, rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("mode", ["unmerged", "merged"])
def test_per_row_adapters_equal_each_row_alone(
    client: TestClient, base_folder: Path, mode: str
) -> None:
    specs = {}
    for i, targets in enumerate([("layer1", "layer2"), ("layer1",), ("layer2",)]):
        config, tensors, files = make_files(r=2 + i, seed=i, targets=targets)
        upload(client, f"a{i}", *files)
        specs[f"a{i}"] = (config, tensors)
    rng = random.Random(0)
    names = [rng.choice([*specs, None]) for _ in range(40)]
    x = _x(40)
    response = _predict(client, inputs=x.tolist(), adapters=names, mode=mode)
    assert response.status_code == 200, response.text
    out = torch.tensor(response.json()["outputs"], dtype=torch.float64)
    for row, name in enumerate(names):
        config, tensors = specs[name] if name else (None, None)
        ref = reference_forward(base_folder, x[row : row + 1], config, tensors)
        torch.testing.assert_close(out[row : row + 1], ref, rtol=1e-4, atol=1e-5)
        alone = _predict(client, inputs=x[row : row + 1].tolist(), adapter=name, mode=mode)
        assert alone.json()["outputs"][0] == pytest.approx(out[row].tolist(), rel=1e-5, abs=1e-6)


def test_unknown_adapter_is_404_naming_the_field(client: TestClient) -> None:
    response = _predict(client, inputs=_x(1).tolist(), adapter="missing")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "adapter_not_found"
    assert response.json()["error"]["param"] == "adapter"
    response = _predict(client, inputs=_x(2).tolist(), adapters=[None, "missing"])
    assert response.status_code == 404 and response.json()["error"]["param"] == "adapters"
    assert response.json()["error"]["code"] == "adapter_not_found"


BAD_INPUTS = {
    "wrong width": ({"inputs": [[0.0] * 15]}, "row 0 has 15 values; must have shape (N, 16)"),
    "ragged": (
        {"inputs": [[0.0] * 16, [0.0] * 17]},
        "row 1 has 17 values; must have shape (N, 16)",
    ),
    "empty": ({"inputs": []}, "inputs is empty; must have shape (N, 16)"),
    "empty row": ({"inputs": [[]]}, "row 0 has 0 values; must have shape (N, 16)"),
    "too many rows": (
        {"inputs": [[0.0] * 16] * 65},
        "65 rows; must have shape (N, 16) with 1 <= N <= 64",
    ),
    "both adapter fields": (
        {"inputs": [[0.0] * 16], "adapter": "a", "adapters": ["a"]},
        "not both",
    ),
    "adapters length": ({"inputs": [[0.0] * 16], "adapters": ["a", "a"]}, "one per row"),
    "bad name": ({"inputs": [[0.0] * 16], "adapter": "../x"}, "must match"),
    "bad mode": ({"inputs": [[0.0] * 16], "mode": "fast"}, "mode"),
    "not numbers": ({"inputs": [["a"] * 16]}, "inputs must hold only numbers, not str"),
    "unknown field": ({"inputs": [[0.0] * 16], "adaptor": "a"}, "adaptor"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_are_422_with_a_message_naming_the_shape(client: TestClient, case: str) -> None:
    body, fragment = BAD_INPUTS[case]
    response = _predict(client, **body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert fragment in error["message"]


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_inputs_are_422(client: TestClient, literal: str) -> None:
    row = ", ".join(["0.5"] * 15 + [literal])
    response = client.post(
        "/v1/predict",
        content=f'{{"inputs": [[{row}]]}}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_input"
    assert "numbers must be finite" in response.json()["error"]["message"]


def test_malformed_json_is_400(client: TestClient) -> None:
    response = client.post(
        "/v1/predict", content=b'{"inputs": [[1,', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


def _binary(client: TestClient, x: torch.Tensor, params=None, metadata=None, accept_binary=True):
    from safetensors.torch import save

    headers = {"content-type": "application/octet-stream"}
    if accept_binary:
        headers["accept"] = "application/octet-stream"
    body = save({"inputs": x}, metadata=metadata)
    return client.post("/v1/predict", content=body, params=params, headers=headers)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_safetensors_in_and_out(client: TestClient, base_folder: Path, dtype) -> None:
    from safetensors.torch import load

    config, tensors, files = make_files(r=4, seed=3)
    upload(client, "a", *files)
    x = _x(5).to(dtype)
    response = _binary(client, x, params={"adapter": "a", "mode": "unmerged"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    out = load(response.content)["outputs"]
    assert out.dtype == torch.float32 and out.shape == (5, 4)
    ref = reference_forward(base_folder, x.float(), config, tensors)
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5)


def test_safetensors_per_row_adapters_in_the_metadata(
    client: TestClient, base_folder: Path
) -> None:
    import json

    config, tensors, files = make_files(r=2, seed=4)
    upload(client, "a", *files)
    x = _x(3)
    meta = {"adapters": json.dumps(["a", None, "a"])}
    response = _binary(client, x, metadata=meta, accept_binary=False)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    out = torch.tensor(response.json()["outputs"], dtype=torch.float64)
    for row, name in enumerate(["a", None, "a"]):
        ref = reference_forward(base_folder, x[row : row + 1], config if name else None, tensors)
        torch.testing.assert_close(out[row : row + 1], ref, rtol=1e-4, atol=1e-5)


def test_bad_safetensors_bodies_are_422(client: TestClient) -> None:
    from safetensors.torch import save

    headers = {"content-type": "application/octet-stream"}
    cases = [
        b"not safetensors",
        save({"x": torch.randn(2, 16)}),
        save({"inputs": torch.randn(2, 15)}),
        save({"inputs": torch.zeros(2, 16, dtype=torch.int32)}),
        save({"inputs": torch.randn(2, 16)}, metadata={"adapters": "[1, 2]"}),
        save({"inputs": torch.full((2, 16), float("nan"))}),
    ]
    for body in cases:
        response = client.post("/v1/predict", content=body, headers=headers)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "invalid_input"


def test_wrong_content_type_is_415(client: TestClient) -> None:
    response = client.post("/v1/predict", content=b"x", headers={"content-type": "text/csv"})
    assert (
        response.status_code == 415 and response.json()["error"]["code"] == "unsupported_media_type"
    )


def test_every_answer_carries_server_timing(client: TestClient) -> None:
    response = _predict(client, inputs=_x(1).tolist())
    timing = response.headers["server-timing"]
    parts = dict(p.strip().split(";dur=") for p in timing.split(","))
    assert set(parts) == {"queue", "model", "total"}
    assert float(parts["total"]) >= float(parts["model"]) >= 0


def test_json_outputs_are_the_exact_float32_values(client: TestClient) -> None:
    from safetensors.torch import load

    x = _x(4)
    as_json = torch.tensor(
        _predict(client, inputs=x.tolist()).json()["outputs"], dtype=torch.float32
    )
    as_binary = load(_binary(client, x).content)["outputs"]
    assert torch.equal(as_json, as_binary)


def test_batching_off_serves_the_same(settings, base_folder: Path) -> None:
    from app.main import create_app

    with TestClient(create_app(settings.model_copy(update={"batching": False}))) as client:
        config, tensors, files = make_files(r=2, seed=5)
        upload(client, "a", *files)
        x = _x(3)
        body = _predict(client, inputs=x.tolist(), adapter="a").json()
        ref = reference_forward(base_folder, x, config, tensors)
        torch.testing.assert_close(
            torch.tensor(body["outputs"], dtype=torch.float64), ref, rtol=1e-4, atol=1e-5
        )
