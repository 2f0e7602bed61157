"""A hostile client, class by class: bodies, types, non-finite numbers, unknown parameters,
store files, slow clients, disconnects, bugs. Each answer is a clear 4xx in the envelope (or a
closed connection for a client that will not finish), and nothing changes on the server.

Races have their own modules: tests/test_races.py (uploads, overwrites, deletes, predictions on
the same names) and tests/api/test_jobs.py (a job created while its dataset is deleted).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from support.http import make_files, snapshot, upload
from support.server import running_server

ROW = [0.25] * 16


@pytest.fixture
def store(settings) -> Path:
    return settings.adapters_dir


def _error(response: httpx.Response) -> dict:
    return response.json()["error"]


def _post_json(client: TestClient, path: str, text: str | bytes) -> httpx.Response:
    return client.post(path, content=text, headers={"content-type": "application/json"})


# --- bodies -------------------------------------------------------------------------------


def test_a_body_over_its_routes_cap_is_refused_before_it_is_read(client: TestClient) -> None:
    # A predict body cannot need more than MAX_REQUEST_ROWS rows of the base's width, however
    # high MAX_UPLOAD_BYTES is: this one declares 10 MB and sends nothing.
    response = client.post(
        "/v1/predict",
        content=b"",
        headers={"content-type": "application/json", "content-length": str(10_000_000)},
    )
    assert response.status_code == 413
    assert _error(response)["code"] == "payload_too_large"


def test_every_route_has_a_body_cap_far_below_max_upload_bytes(client: TestClient) -> None:
    limit = client.app.state.services.body_limit  # type: ignore[attr-defined]
    assert limit("GET", "/v1/adapters", "") <= 64 * 1024
    assert limit("POST", "/v1/fine-tuning/jobs", "application/json") <= 64 * 1024
    # 64 rows of 16 numbers, and a rank-64 adapter on a 16 -> 8 -> 4 base: a few hundred KiB.
    assert limit("POST", "/v1/predict", "application/json") < 1024 * 1024
    assert limit("POST", "/v1/adapters", "multipart/form-data") < 1024 * 1024


@pytest.mark.parametrize("depth", [1025, 40_000])
def test_deeply_nested_json_is_400_not_500(client: TestClient, depth: int) -> None:
    body = '{"inputs": ' + "[" * depth + "]" * depth + "}"
    response = _post_json(client, "/v1/predict", body)
    assert response.status_code == 400
    assert _error(response)["code"] == "invalid_json"
    assert "nested too deeply" in _error(response)["message"]


def test_a_big_json_body_is_parsed_off_the_event_loop(settings, monkeypatch) -> None:
    from app.families.mlp import serving as route

    threads: list[str] = []
    original = route.parse_json

    def spy(raw: bytes, **kwargs):
        threads.append(threading.current_thread().name)
        return original(raw, **kwargs)

    monkeypatch.setattr(route, "parse_json", spy)
    roomy = settings.model_copy(update={"max_request_rows": 1024})
    with TestClient(create_app(roomy)) as client:
        assert client.post("/v1/predict", json={"inputs": [ROW]}).status_code == 200
        big = {"inputs": [[0.12345678912345678] * 16] * 1024}  # about 320 kB of JSON
        assert client.post("/v1/predict", json=big).status_code == 200
    assert "AnyIO worker" not in threads[0]
    assert "AnyIO worker" in threads[1]


# --- types --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kind"), [('"1.5"', "str"), ("true", "bool"), ("null", "NoneType"), ("[1]", "list")]
)
def test_inputs_are_numbers_only(client: TestClient, value: str, kind: str) -> None:
    row = ", ".join(["0.5"] * 15 + [value])
    response = _post_json(client, "/v1/predict", f'{{"inputs": [[{row}]]}}')
    assert response.status_code == 422
    assert _error(response)["code"] == "invalid_input"
    assert kind in _error(response)["message"]


@pytest.mark.parametrize(
    "field", [{"mode": 1}, {"adapter": 7}, {"adapters": "a"}, {"adapters": [1]}, {"mode": None}]
)
def test_other_predict_fields_are_not_coerced(client: TestClient, field: dict) -> None:
    response = client.post("/v1/predict", json={"inputs": [ROW], **field})
    assert response.status_code == 422
    assert _error(response)["code"] == "invalid_input"
    assert _error(response)["param"].split(".")[0] == next(iter(field))


def test_a_string_boolean_in_an_adapter_config_is_refused(client: TestClient, store) -> None:
    config, _, (_, weights) = make_files()
    before = snapshot(store)
    for field, value in (("use_rslora", "false"), ("r", "4"), ("lora_alpha", True)):
        response = upload(client, "typed", json.dumps({**config, field: value}).encode(), weights)
        assert response.status_code == 422, field
        assert _error(response)["code"] == "invalid_adapter"
        assert _error(response)["param"] == field
    assert snapshot(store) == before


def test_a_string_boolean_in_hyperparameters_is_refused(client: TestClient) -> None:
    body = {"adapter_name": "x", "training_dataset": "ds-x", "hyperparameters": {}}
    for field, value in (("use_rslora", "false"), ("rank", "4"), ("epochs", 1.5)):
        body["hyperparameters"] = {field: value}
        response = client.post("/v1/fine-tuning/jobs", json=body)
        assert response.status_code == 422, field
        assert _error(response)["code"] == "invalid_input"


# --- non-finite numbers -------------------------------------------------------------------


@pytest.mark.parametrize("literal", ["NaN", "-Infinity", "1e400", "1" * 401])
def test_non_finite_inputs_are_422(client: TestClient, literal: str) -> None:
    row = ", ".join(["0.5"] * 15 + [literal])
    response = _post_json(client, "/v1/predict", f'{{"inputs": [[{row}]]}}')
    assert response.status_code == 422
    assert _error(response)["code"] == "invalid_input"


def test_inputs_beyond_float32_are_422(client: TestClient) -> None:
    response = client.post("/v1/predict", json={"inputs": [[1e39] * 16]})
    assert response.status_code == 422
    assert _error(response)["code"] == "invalid_input"
    assert "float32" in _error(response)["message"]


def test_an_answer_never_carries_a_non_finite_value(client: TestClient) -> None:
    # Finite in float32, but the model's outputs overflow: a 422 naming the row, never null.
    response = client.post("/v1/predict", json={"inputs": [ROW, [3e38] * 16]})
    assert response.status_code == 422
    assert _error(response)["code"] == "invalid_input"
    assert "rows [1]" in _error(response)["message"]


@pytest.mark.parametrize("alpha", ["NaN", "Infinity", "1e400", "1" * 401])
def test_a_non_finite_lora_alpha_is_refused(client: TestClient, store, alpha: str) -> None:
    config, _, (_, weights) = make_files()
    text = json.dumps({**config, "lora_alpha": 0}).replace(
        '"lora_alpha": 0', f'"lora_alpha": {alpha}'
    )
    before = snapshot(store)
    response = upload(client, "alpha", text.encode(), weights)
    assert response.status_code == 422
    assert _error(response)["code"] == "invalid_adapter"
    assert snapshot(store) == before


# --- unknown parameters -------------------------------------------------------------------


def test_every_operation_refuses_an_unknown_query_parameter(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path, ops in paths.items():
        url = path.replace("{", "").replace("}", "") + "?bogus=1"
        for method in ops:
            response = client.request(method.upper(), url)
            assert response.status_code == 422, f"{method} {path}"
            assert _error(response)["code"] == "unknown_parameter", f"{method} {path}"
            assert _error(response)["param"] == "bogus"


def test_a_json_predict_refuses_the_binary_query_parameters(client: TestClient) -> None:
    response = client.post("/v1/predict?adapter=missing", json={"inputs": [ROW]})
    assert response.status_code == 422
    assert _error(response)["code"] == "unknown_parameter"
    assert _error(response)["param"] == "adapter"


def test_a_repeated_parameter_is_refused(client: TestClient) -> None:
    response = client.get("/v1/fine-tuning/jobs?limit=1&limit=1000")
    assert response.status_code == 422
    assert _error(response)["code"] == "unknown_parameter"


def test_rejected_values_are_not_echoed_in_full(client: TestClient) -> None:
    name = "x" * 10_000
    response = client.get(f"/v1/adapters/{name}")
    assert response.status_code == 422
    assert _error(response)["code"] == "invalid_name"
    assert len(_error(response)["message"]) < 400
    response = client.get(f"/v1/model?{'y' * 5000}=1")
    assert len(_error(response)["message"]) < 400


# --- store files --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["README.md", "notes.txt"])
def test_an_upload_never_replaces_a_file_it_did_not_make(
    client: TestClient, store, name: str
) -> None:
    """Names are rows in the database and versions live under .store/: an upload, overwrite or
    delete of a name never touches a file of that name in the adapters folder."""
    (store / name).write_text("the operator's own file\n")
    for overwrite in (False, True):
        response = upload(client, name, *make_files(seed=int(overwrite))[2], overwrite=overwrite)
        assert response.status_code == 201, response.text
    assert client.delete(f"/v1/adapters/{name}").status_code == 204
    response = client.delete(f"/v1/adapters/{name}")
    assert response.status_code == 404
    assert _error(response)["code"] == "adapter_not_found"
    assert (store / name).read_text() == "the operator's own file\n"


# --- bugs ---------------------------------------------------------------------------------


def test_a_bug_is_a_500_envelope_with_the_request_id_and_one_json_log_line(
    settings, monkeypatch, capsys
) -> None:
    from app.api.routes import model as route

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(route, "ModelPublic", broken)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        capsys.readouterr()
        response = client.get("/v1/model", headers={"x-request-id": "req-42"})
    assert response.status_code == 500
    assert _error(response) == {
        "type": "server_error",
        "code": "internal_error",
        "message": "internal server error",
        "param": None,
    }
    assert response.headers["x-request-id"] == "req-42"
    lines = capsys.readouterr().err.splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    errors = [r for r in records if r["level"] == "ERROR"]
    assert len(errors) == 1
    assert errors[0]["request_id"] == "req-42"
    assert "RuntimeError: a bug" in errors[0]["exc_info"]


# --- slow clients, disconnects (the real server) --------------------------------------------


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    return sock


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """True if the server closes the connection (EOF or reset) within `seconds`."""
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_idle_slow_and_stalled_clients_are_cut_off(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    limits = {"header_timeout_s": "1", "body_timeout_s": "1", "keep_alive_timeout_s": "1"}
    with running_server(tmp_path, log=log, **limits) as server:
        idle = [_connect(server.url) for _ in range(20)]
        slow_headers = [_connect(server.url) for _ in range(20)]
        for sock in slow_headers:
            sock.sendall(b"GET /v1/model HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        slow_bodies = [_connect(server.url) for _ in range(20)]
        for sock in slow_bodies:
            sock.sendall(
                b"POST /v1/predict HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                b'content-length: 1000\r\n\r\n{"inputs": '
            )
        kept_alive = _connect(server.url)
        kept_alive.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        # The server answers others meanwhile.
        assert httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200
        for sock in [*idle, *slow_headers, *slow_bodies, kept_alive]:
            assert _closed_within(sock, 6)
            sock.close()
        # A stalled body got a 408 in the envelope; a trickled header got a 408 too.
        sock = _connect(server.url)
        sock.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 1000\r\n\r\n{"
        )
        answer = b""
        sock.settimeout(6)
        while chunk := sock.recv(65536):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b'"code":"request_timeout"' in answer
        metrics = httpx.get(f"{server.url}/metrics").text
    assert 'status="500"' not in metrics
    for line in log.read_text().splitlines():
        json.loads(line)  # JSON only: no plain-text tracebacks or access lines
    assert '"level": "ERROR"' not in log.read_text()


def test_without_a_key_a_big_upload_is_refused_before_its_body(tmp_path: Path) -> None:
    with running_server(tmp_path, admin_keys="adm-k3y-0123456789") as server:
        sock = _connect(server.url)
        sock.sendall(
            b"POST /v1/adapters HTTP/1.1\r\nHost: x\r\n"
            b"content-type: multipart/form-data; boundary=b\r\n"
            b"content-length: 120000000\r\n\r\n"
        )
        sock.settimeout(5)
        answer = b""
        while chunk := sock.recv(65536):  # answered with no body byte sent, then closed:
            answer += chunk  # the 120 MB are not waited for
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
        assert b'"code":"invalid_api_key"' in answer
        sock.close()


def test_connections_past_the_cap_are_closed_and_the_rest_served(tmp_path: Path) -> None:
    with running_server(tmp_path, max_connections="8") as server:
        held = [_connect(server.url) for _ in range(8)]
        time.sleep(0.2)
        extra = _connect(server.url)
        assert _closed_within(extra, 3)
        for sock in held:
            sock.close()
        time.sleep(0.2)
        assert httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200


def test_a_client_that_hangs_up_mid_body_is_no_error(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with running_server(tmp_path, log=log) as server:
        for path in ("/v1/predict", "/v1/fine-tuning/jobs", "/v1/datasets"):
            sock = _connect(server.url)
            sock.sendall(
                f"POST {path} HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                'content-length: 100000\r\n\r\n{"inputs": [['.encode()
            )
            time.sleep(0.3)
            sock.close()
        time.sleep(0.5)
        metrics = httpx.get(f"{server.url}/metrics").text
    assert 'status="499"' in metrics
    assert 'status="500"' not in metrics and 'status="400"' not in metrics
    text = log.read_text()
    assert '"level": "ERROR"' not in text and "Traceback" not in text
