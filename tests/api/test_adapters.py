"""Adapter upload, list, read, download, delete; malformed uploads change nothing."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load, save

from support.helpers import TINY_SIZES, lora_tensors, peft_config
from support.http import make_files, snapshot, upload


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


def test_a_version_downloads_as_the_same_bytes_at_any_time(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Zip entries carry a time; a download must not: replicas answer at different seconds."""
    upload(client, "a", *make_files(r=2)[2])
    first = client.get("/v1/adapters/a/download").content
    later = time.localtime(time.time() + 3600)
    monkeypatch.setattr(time, "localtime", lambda *_: later)
    assert client.get("/v1/adapters/a/download").content == first
    entries = zipfile.ZipFile(io.BytesIO(first)).infolist()
    assert {e.date_time for e in entries} == {(1980, 1, 1, 0, 0, 0)}


def test_download_not_found(client: TestClient) -> None:
    response = client.get("/v1/adapters/nope/download")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "adapter_not_found"


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
    body, content_type = _multipart([("name", None, b"a")])
    response = client.post("/v1/adapters", content=body, headers={"content-type": content_type})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_input"
    assert response.json()["error"]["param"] == "config"


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


# --- the store only touches what it made ---------------------------------------------------
def _foreign(store: Path, kind: str) -> str:
    """Put an entry the service did not make into the store; returns its name."""
    store.mkdir(parents=True, exist_ok=True)
    if kind == "readme":
        (store / "README.md").write_text("# the adapters folder\n")
        return "README.md"
    if kind == "notes":
        (store / "notes.txt").write_text("an operator's notes")
        return "notes.txt"
    if kind == "symlink":
        (store / "target").mkdir(exist_ok=True)
        (store / "link").symlink_to(store / "target", target_is_directory=True)
        return "link"
    if kind == "empty dir":
        (store / "empty").mkdir()
        return "empty"
    (store / "other").mkdir()
    (store / "other" / "data.csv").write_text("1,2")
    return "other"


FOREIGN = ["readme", "notes", "symlink", "empty dir", "other dir"]


@pytest.mark.parametrize("kind", FOREIGN)
def test_an_upload_under_the_name_of_a_foreign_entry_leaves_the_entry_alone(
    client: TestClient, store: Path, kind: str
) -> None:
    """Versions live in the object store under their ids: a name is never a path."""
    name = _foreign(store, kind)
    before = [entry for entry in snapshot(store) if not entry[0].startswith(".store")]
    response = upload(client, name, *make_files()[2])
    assert response.status_code == 201, response.text
    assert [e for e in snapshot(store) if not e[0].startswith(".store")] == before
    assert (store / name).exists() or (store / name).is_symlink()


@pytest.mark.parametrize("kind", FOREIGN)
def test_delete_or_read_of_a_foreign_name_is_404(
    client: TestClient, store: Path, kind: str
) -> None:
    name = _foreign(store, kind)
    before = snapshot(store)
    for response in (client.delete(f"/v1/adapters/{name}"), client.get(f"/v1/adapters/{name}")):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "adapter_not_found"
    assert snapshot(store) == before


def test_foreign_entries_are_not_imported_nor_warned_about_at_start(
    settings, caplog: pytest.LogCaptureFixture
) -> None:
    from app.main import create_app

    for kind in FOREIGN:
        _foreign(settings.adapters_dir, kind)
    app = create_app(settings)
    # The app's loggers do not propagate to the root, where caplog listens.
    adapters_log = logging.getLogger("app.adapters")
    adapters_log.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.DEBUG, "app.adapters"), TestClient(app) as client:
            assert client.get("/v1/adapters").json()["data"] == []
    finally:
        adapters_log.removeHandler(caplog.handler)
    messages = [r.getMessage() for r in caplog.records]
    assert any("README" in m for m in messages)  # the handler did listen (at debug level)
    noisy = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [m for m in noisy if any(n in m for n in ("README", "notes", "link", "other"))]


# --- broken adapters: folders that fail are not imported; a version whose stored files go
# bad is listed as broken, refused at predict time, deletable and replaceable ------------------
def test_broken_folders_are_not_imported_and_stay_where_they_are(settings) -> None:
    from app.main import create_app

    config, _, (config_bytes, weights) = make_files()
    store = settings.adapters_dir
    for name, files in {
        "truncated": {"adapter_config.json": config_bytes, "adapter_model.safetensors": b"xx"},
        "bad-config": {
            "adapter_config.json": json.dumps({**config, "use_rslora": "false"}).encode(),
            "adapter_model.safetensors": weights,
        },
        "good": {"adapter_config.json": config_bytes, "adapter_model.safetensors": weights},
    }.items():
        (store / name).mkdir(parents=True)
        for filename, data in files.items():
            (store / name / filename).write_bytes(data)
    with TestClient(create_app(settings)) as client:
        listed = [a["name"] for a in client.get("/v1/adapters").json()["data"]]
    assert listed == ["good"]
    assert (store / "truncated").is_dir() and (store / "bad-config").is_dir()
    assert (store / ".imported" / "good" / "adapter_model.safetensors").read_bytes() == weights


@pytest.fixture
def broken_client(client: TestClient, store: Path) -> TestClient:
    """`bad` is uploaded, then its weights object is overwritten with garbage behind our back."""
    version = upload(client, "bad", *make_files()[2]).json()["version"]
    weights = store / ".store" / "default" / version / "adapter_model.safetensors"
    weights.write_bytes(b"xx")
    return client


def test_a_version_with_broken_files_is_refused_at_predict_and_listed_as_broken(
    broken_client: TestClient,
) -> None:
    rows = [[0.0] * TINY_SIZES[0]]
    for body in ({"inputs": rows, "adapter": "bad"}, {"inputs": rows, "adapters": ["bad"]}):
        response = broken_client.post("/v1/predict", json=body)
        assert response.status_code == 409, response.text
        assert response.json()["error"]["code"] == "adapter_broken"
        assert response.json()["error"]["param"] in ("adapter", "adapters")
    body = broken_client.get("/v1/adapters/bad").json()
    assert body["status"] == "broken" and body["error"]["code"] == "invalid_adapter"
    assert [a["status"] for a in broken_client.get("/v1/adapters").json()["data"]] == ["broken"]


def test_a_broken_adapter_is_replaced_only_with_overwrite(
    broken_client: TestClient,
) -> None:
    rows = [[0.0] * TINY_SIZES[0]]
    broken_client.post("/v1/predict", json={"inputs": rows, "adapter": "bad"})
    response = upload(broken_client, "bad", *make_files(seed=3)[2])
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "adapter_exists"
    response = upload(broken_client, "bad", *make_files(seed=3)[2], overwrite=True)
    assert response.status_code == 201
    assert response.json()["status"] == "ready"
    response = broken_client.post("/v1/predict", json={"inputs": rows, "adapter": "bad"})
    assert response.status_code == 200


def test_a_broken_adapter_can_be_deleted(broken_client: TestClient, store: Path) -> None:
    version = broken_client.get("/v1/adapters/bad").json()["version"]
    assert broken_client.delete("/v1/adapters/bad").status_code == 204
    assert not (store / ".store" / "default" / version).exists() or not any(
        (store / ".store" / "default" / version).iterdir()
    )
    response = broken_client.get("/v1/adapters/bad")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "adapter_not_found"


# --- the listing: per-layer scaling, which bytes each digest covers --------------------------
def test_listing_shows_each_layers_rank_alpha_and_scaling(client: TestClient) -> None:
    config = peft_config(
        4,
        8,
        ["layer1", "layer2"],
        use_rslora=True,
        rank_pattern={"layer2": 2},
        alpha_pattern={"layer2": 6},
    )
    tensors = lora_tensors(TINY_SIZES, ["layer1", "layer2"], {"layer1": 4, "layer2": 2})
    response = upload(client, "a", json.dumps(config).encode(), save(tensors))
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["scaling"] == 8 / math.sqrt(4) and body["rank"] == 4 and body["alpha"] == 8
    assert body["layers"] == [
        {"module": "layer1", "rank": 4, "alpha": 8.0, "scaling": 8 / math.sqrt(4)},
        {"module": "layer2", "rank": 2, "alpha": 6.0, "scaling": 6 / math.sqrt(2)},
    ]
    assert client.get("/v1/adapters").json()["data"][0]["layers"] == body["layers"]


def test_sha256_covers_the_stored_file_and_uploaded_sha256_the_upload(client: TestClient) -> None:
    _, _, (config, weights) = make_files()
    body = upload(client, "a", config, weights).json()
    archive = zipfile.ZipFile(io.BytesIO(client.get("/v1/adapters/a/download").content))
    stored = archive.read("adapter_model.safetensors")
    assert stored != weights  # rewritten as fp32 with our header
    assert body["sha256"] == hashlib.sha256(stored).hexdigest()
    assert body["uploaded_sha256"] == hashlib.sha256(weights).hexdigest()
    assert client.get("/v1/adapters/a").json()["uploaded_sha256"] == body["uploaded_sha256"]


def test_the_schema_says_which_bytes_each_digest_covers(client: TestClient) -> None:
    props = client.get("/openapi.json").json()["components"]["schemas"]["AdapterPublic"][
        "properties"
    ]
    assert "as stored" in props["sha256"]["description"]
    assert "as it was uploaded" in props["uploaded_sha256"]["description"]
    assert "sqrt(r)" in props["scaling"]["description"]


# --- strict configs over HTTP ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "raw_value"),
    [
        ("use_rslora", '"false"'),
        ("lora_alpha", "NaN"),
        ("lora_alpha", "Infinity"),
        ("lora_alpha", "1e400"),
        ("lora_alpha", "1" + "0" * 400),
        ("something_new", "[" * 100_000 + "]" * 100_000),
    ],
)
def test_a_config_with_wrong_types_or_non_finite_numbers_is_422(
    client: TestClient, store: Path, field: str, raw_value: str
) -> None:
    config, _, (_, weights) = make_files()
    text = json.dumps({k: v for k, v in config.items() if k != field})[:-1]
    text += f', "{field}": {raw_value}}}'
    upload(client, "a", *make_files(seed=3)[2])
    before = snapshot(store)
    response = upload(client, "a", text.encode(), weights, overwrite=True)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_adapter"
    assert response.json()["error"]["param"] == (field if field != "something_new" else "config")
    assert snapshot(store) == before


def test_a_rejected_name_is_echoed_capped(client: TestClient, store: Path) -> None:
    response = upload(client, "a" * 10_000, *make_files()[2])
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_name" and error["param"] == "name"
    assert len(error["message"]) < 300 and "10000" in error["message"]


# --- the multipart body: parsed by the route, after auth -------------------------------------
def _body_that_records_reading(read: list[bool]) -> Iterator[bytes]:
    read.append(True)
    yield b'--b\r\nContent-Disposition: form-data; name="name"\r\n\r\na\r\n--b--\r\n'


@pytest.mark.parametrize(("key", "status"), [(None, 401), ("api-secret", 403)])
def test_upload_is_refused_by_auth_before_its_body_is_read(
    settings, store: Path, key: str | None, status: int
) -> None:
    from app.main import create_app

    keyed = type(settings)(
        **{**settings.model_dump(), "admin_keys": "admin-secret", "api_keys": "api-secret"}
    )
    with TestClient(create_app(keyed)) as client:
        read: list[bool] = []
        headers = {"content-type": "multipart/form-data; boundary=b"}
        if key:
            headers["authorization"] = f"Bearer {key}"
        response = client.post(
            "/v1/adapters", content=_body_that_records_reading(read), headers=headers
        )
        assert response.status_code == status, response.text
        assert response.json()["error"]["code"] in ("invalid_api_key", "insufficient_permissions")
        assert read == []


def _multipart(fields: list[tuple[str, str | None, bytes]]) -> tuple[bytes, str]:
    """A hand-made multipart body: (field name, filename or None for a plain field, bytes)."""
    parts = []
    for name, filename, data in fields:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        parts.append(f"--b\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + b"--b--\r\n", "multipart/form-data; boundary=b"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ([("name", None), ("config", "c.json")], "weights"),
        ([("config", "c.json"), ("weights", "w.safetensors")], "name"),
        ([("name", None), ("config", None), ("weights", "w.safetensors")], "config"),
        ([("name", "n.txt"), ("config", "c.json"), ("weights", None)], "name"),
        ([("name", None), ("config", "c.json"), ("weights", None)], "weights"),
        ([("name", None), ("extra", None), ("config", "c.json"), ("weights", "w.sft")], "extra"),
        ([("name", None), ("config", "c.json"), ("confg", "w.safetensors")], "confg"),
    ],
)
def test_upload_fields_missing_unknown_or_of_the_wrong_kind_are_422(
    client: TestClient, store: Path, fields: list[tuple[str, str | None]], param: str
) -> None:
    upload(client, "a", *make_files()[2])
    before = snapshot(store)
    config, weights = make_files(seed=4)[2]
    data = {"name": b"a", "config": config, "weights": weights, "extra": b"x", "confg": weights}
    body, content_type = _multipart([(f, filename, data[f]) for f, filename in fields])
    response = client.post(
        "/v1/adapters?overwrite=true", content=body, headers={"content-type": content_type}
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_input"
    assert response.json()["error"]["param"] == param
    assert snapshot(store) == before


def test_upload_with_too_many_parts_or_a_repeated_field_is_4xx(
    client: TestClient, store: Path
) -> None:
    config, weights = make_files()[2]
    before = snapshot(store)
    for fields in (
        [
            ("name", None, b"a"),
            ("name", None, b"b"),
            ("config", "c", config),
            ("weights", "w", weights),
        ],
        [("name", None, b"a"), ("config", "c", config), ("weights", "w", weights), ("x", "x", b"")],
    ):
        body, content_type = _multipart(fields)
        response = client.post("/v1/adapters", content=body, headers={"content-type": content_type})
        assert response.status_code in (400, 422), response.text
        assert response.json()["error"]["code"] in ("invalid_input", "malformed_body")
    assert snapshot(store) == before


def test_upload_that_is_not_multipart_is_415(client: TestClient) -> None:
    for response in (
        client.post("/v1/adapters", json={"name": "a"}),
        client.post("/v1/adapters", data={"name": "a"}),  # urlencoded: no room for the files
    ):
        assert response.status_code == 415
        assert response.json()["error"]["code"] == "unsupported_media_type"


@pytest.mark.parametrize("value", ["yes", "1", "on", "TRUE", ""])
def test_overwrite_takes_only_true_or_false(client: TestClient, store: Path, value: str) -> None:
    upload(client, "a", *make_files()[2])
    before = snapshot(store)
    response = client.post(
        "/v1/adapters",
        params={"overwrite": value},
        data={"name": "a"},
        files={
            "config": ("c", make_files(seed=5)[2][0]),
            "weights": ("w", make_files(seed=5)[2][1]),
        },
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == "overwrite"
    assert snapshot(store) == before


def test_openapi_documents_the_multipart_upload(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/v1/adapters"]["post"]
    schema = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert operation["requestBody"]["required"] is True
    assert schema["required"] == ["name", "config", "weights"]
    assert schema["properties"]["config"]["format"] == "binary"
    assert [p["name"] for p in operation["parameters"]] == ["overwrite"]
    assert operation["parameters"][0]["schema"]["type"] == "boolean"
