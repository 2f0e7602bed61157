from __future__ import annotations

from fastapi.testclient import TestClient

from app.main import create_app


def test_healthz_answers_ok(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_is_200_once_loaded(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200


def test_readyz_is_503_before_the_lifespan_ran(settings) -> None:
    client = TestClient(create_app(settings))  # not entered: no lifespan, nothing loaded
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "not_ready"
    assert response.headers["retry-after"] == "1"
    assert client.get("/healthz").status_code == 200


def test_unknown_route_uses_the_error_envelope(client: TestClient) -> None:
    response = client.get("/v1/nope")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
