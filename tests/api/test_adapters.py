"""Adapter upload, list, read, download, delete; malformed uploads change nothing."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load, save

from tests.api.conftest import make_files, snapshot, upload
from tests.helpers import TINY_SIZES, lora_tensors, peft_config


def test_create_adapter_returns_201_and_the_adapter(client: TestClient) -> None:
    _, _, (config, weights) = make_files(r=4)
    response = upload(client, "a", config, weights)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["name"] == "a" and body["rank"] == 4 and body["alpha"] == 8
    assert body["scaling"] == 2.0 and body["target_modules"] == ["layer1", "layer2"]
    assert body["source"] == "upload" and body["residency"] == "disk" and not body["merged"]
    assert len(body["sha256"]) == 64 and body["size_bytes"] > 0


def test_create_adapter_conflict_is_409_and_overwrite_replaces(client: TestClient) -> None:
    _, _, (config, weights) = make_files(seed=1)
    first = upload(client, "a", config, weights)
    assert first.status_code == 201
    _, _, (config2, weights2) = make_files(seed=2)
    response = upload(client, "a", config2, weights2)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "adapter_exists"
    replaced = upload(client, "a", config2, weights2, overwrite=True)
    assert replaced.status_code == 201
    assert replaced.json()["sha256"] != first.json()["sha256"]
    assert client.get("/v1/adapters/a").json()["sha256"] == replaced.json()["sha256"]


def test_list_and_read_adapters(client: TestClient) -> None:
    for name in ("b", "a"):
        _, _, files = make_files()
        upload(client, name, *files)
    listed = client.get("/v1/adapters").json()
    assert listed["object"] == "list"
    assert [a["name"] for a in listed["data"]] == ["a", "b"]
    assert client.get("/v1/adapters/a").json()["name"] == "a"


def test_read_adapter_not_found(client: TestClient) -> None:
    response = client.get("/v1/adapters/missing")
    assert response.status_code == 404
    assert response.json()["error"] == {
        "type": "invalid_request_error",
        "code": "adapter_not_found",
        "message": "adapter 'missing' not found",
        "param": "name",
    }


def test_download_is_a_zip_of_the_two_peft_files(client: TestClient) -> None:
    _, tensors, files = make_files(r=2)
    upload(client, "a", *files)
    response = client.get("/v1/adapters/a/download")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert sorted(archive.namelist()) == ["adapter_config.json", "adapter_model.safetensors"]
    got = load(archive.read("adapter_model.safetensors"))
    assert got.keys() == tensors.keys()
    for key, value in tensors.items():
        assert torch.equal(got[key], value)
    assert json.loads(archive.read("adapter_config.json"))["r"] == 2


def test_download_not_found(client: TestClient) -> None:
    assert client.get("/v1/adapters/nope/download").status_code == 404


def test_delete_adapter_then_it_is_gone(client: TestClient, store: Path) -> None:
    upload(client, "a", *make_files()[2])
    assert client.delete("/v1/adapters/a").status_code == 204
    assert client.get("/v1/adapters/a").status_code == 404
    assert not (store / "a").exists()
    response = client.delete("/v1/adapters/a")
    assert response.status_code == 404 and response.json()["error"]["code"] == "adapter_not_found"


def _good() -> tuple[dict, dict]:
    config, tensors, _ = make_files(r=4)
    return config, tensors


def _malformed() -> dict[str, tuple[str, bytes, bytes, str]]:
    """name -> (adapter name, config bytes, weights bytes, weights filename)."""
    config, tensors = _good()
    cfg = json.dumps(config).encode()
    good_weights = save(tensors)
    nan = dict(tensors)
    nan["base_model.model.layer1.lora_A.weight"] = tensors[
        "base_model.model.layer1.lora_A.weight"
    ].clone()
    nan["base_model.model.layer1.lora_A.weight"][0, 0] = float("nan")
    wrong_shape = {**tensors, "base_model.model.layer2.lora_B.weight": torch.zeros(4, 3)}
    extra = {**tensors, "base_model.model.layer1.lora_magnitude_vector": torch.ones(8)}
    missing = {k: v for k, v in tensors.items() if "layer2.lora_A" not in k}
    big = peft_config(65, 8, ["layer1", "layer2"])
    big_tensors = lora_tensors(TINY_SIZES, ["layer1", "layer2"], 65)
    return {
        "truncated": (
            "a",
            cfg,
            good_weights[: len(good_weights) // 2],
            "adapter_model.safetensors",
        ),
        "garbage": ("a", cfg, b"not a safetensors file at all", "adapter_model.safetensors"),
        "empty": ("a", cfg, b"", "adapter_model.safetensors"),
        "wrong shape": ("a", cfg, save(wrong_shape), "adapter_model.safetensors"),
        "extra tensor": ("a", cfg, save(extra), "adapter_model.safetensors"),
        "missing tensor": ("a", cfg, save(missing), "adapter_model.safetensors"),
        "nan": ("a", cfg, save(nan), "adapter_model.safetensors"),
        "rank over limit": ("a", json.dumps(big).encode(), save(big_tensors), "w.safetensors"),
        "pickle .bin": ("a", cfg, b"\x80\x04\x95fake pickle", "adapter_model.bin"),
        "pickle renamed": ("a", cfg, b"\x80\x04\x95fake pickle", "adapter_model.safetensors"),
        "torch zip": ("a", cfg, b"PK\x03\x04zip", "adapter_model.safetensors"),
        "dora": ("a", json.dumps({**config, "use_dora": True}).encode(), good_weights, "w"),
        "bad config json": ("a", b"{", good_weights, "adapter_model.safetensors"),
        "path name": ("../x", cfg, good_weights, "adapter_model.safetensors"),
        "slash name": ("a/b", cfg, good_weights, "adapter_model.safetensors"),
        "dot name": ("..", cfg, good_weights, "adapter_model.safetensors"),
        "unicode name": ("naïve", cfg, good_weights, "adapter_model.safetensors"),
    }


@pytest.mark.parametrize("case", list(_malformed()))
def test_malformed_upload_is_422_and_changes_nothing(
    client: TestClient, store: Path, case: str
) -> None:
    _, _, files = make_files(seed=9)
    upload(client, "a", *files)
    before = snapshot(store)
    name, config, weights, filename = _malformed()[case]
    response = upload(client, name, config, weights, overwrite=True, weights_filename=filename)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] in ("invalid_adapter", "invalid_name")
    assert response.json()["error"]["message"]
    assert snapshot(store) == before
    assert [a["name"] for a in client.get("/v1/adapters").json()["data"]] == ["a"]


def test_upload_over_the_size_limit_is_413(settings, tmp_path: Path) -> None:
    from app.main import create_app

    small = settings.model_copy(update={"max_upload_bytes": 2048})
    with TestClient(create_app(small)) as client:
        _, _, (config, weights) = make_files(r=16)
        response = upload(client, "a", config, weights + b"\0" * 4096)
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "payload_too_large"
        assert not (small.adapters_dir / "a").exists()


def test_upload_without_files_is_422(client: TestClient) -> None:
    response = client.post("/v1/adapters", data={"name": "a"})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"


def test_streamed_upload_over_the_size_limit_is_413(settings) -> None:
    from app.main import create_app

    small = settings.model_copy(update={"max_upload_bytes": 4096})
    with TestClient(create_app(small)) as client:

        def chunks():  # no Content-Length: the limit is enforced while the body streams in
            yield b'--b\r\nContent-Disposition: form-data; name="name"\r\n\r\na\r\n'
            for _ in range(10):
                yield b"x" * 1024

        response = client.post(
            "/v1/adapters",
            content=chunks(),
            headers={"content-type": "multipart/form-data; boundary=b"},
        )
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "payload_too_large"


def test_malformed_multipart_bodies_are_4xx_and_change_nothing(
    client: TestClient, store: Path
) -> None:
    upload(client, "a", *make_files()[2])
    before = snapshot(store)
    bodies = [
        (
            b'--b\r\nContent-Disposition: form-data; name="name"\r\n\r\nx',
            "multipart/form-data; boundary=b",
        ),
        (b"no boundary at all", "multipart/form-data"),
        (b"--zz\r\n\r\n--zz--\r\n", "multipart/form-data; boundary=zz"),
        (b"\x00\xff" * 100, "multipart/form-data; boundary=\x00"),
        (b'{"name": "x"}', "application/json"),
    ]
    for body, content_type in bodies:
        response = client.post("/v1/adapters", content=body, headers={"content-type": content_type})
        assert 400 <= response.status_code < 500, (
            content_type,
            response.status_code,
            response.text,
        )
        assert "error" in response.json()
    assert snapshot(store) == before
