"""Every route against every role: no key, a wrong key, an API key, an admin key."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.main import create_app

ADMIN, API, SUPER = "admin-secret", "api-secret", "super-secret"
OPEN = {"/healthz", "/readyz"}
# Which role each route needs; a route missing here fails the test, so none goes unguarded.
ADMIN_ONLY = {
    ("POST", "/v1/adapters"),
    ("POST", "/v1/adapters/compose"),
    ("GET", "/v1/adapters/compose/jobs/{job_id}"),
    ("POST", "/v1/adapters/compose/jobs/{job_id}/cancel"),
    ("DELETE", "/v1/adapters/{name}"),
    ("POST", "/v1/datasets"),
    ("GET", "/v1/datasets"),
    ("GET", "/v1/datasets/{dataset_id}"),
    ("DELETE", "/v1/datasets/{dataset_id}"),
    ("POST", "/v1/fine-tuning/jobs"),
    ("GET", "/v1/fine-tuning/jobs"),
    ("GET", "/v1/fine-tuning/jobs/{job_id}"),
    ("POST", "/v1/fine-tuning/jobs/{job_id}/cancel"),
    ("GET", "/v1/fine-tuning/jobs/{job_id}/events"),
}
SUPER_ONLY = {
    ("POST", "/v1/projects"),
    ("GET", "/v1/projects"),
    ("GET", "/v1/projects/{project_id}"),
    ("POST", "/v1/projects/{project_id}/keys"),
    ("GET", "/v1/projects/{project_id}/keys"),
    ("DELETE", "/v1/projects/{project_id}/keys/{key_id}"),
}
READ = {
    ("GET", "/v1/me"),
    ("GET", "/v1/model"),
    ("GET", "/v1/adapters"),
    ("GET", "/v1/adapters/{name}"),
    ("GET", "/v1/adapters/{name}/download"),
    ("GET", "/v1/adapters/{name}/versions"),
    ("POST", "/v1/predict"),
    ("POST", "/v1/embeddings"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("GET", "/v1/models"),
    ("GET", "/metrics"),
}


@pytest.fixture
def secured(settings) -> Iterator[TestClient]:
    keys = {"admin_keys": ADMIN, "api_keys": API, "super_admin_keys": SUPER}
    keyed = type(settings)(**{**settings.model_dump(), **keys})
    with TestClient(create_app(keyed)) as client:
        yield client


def routes(client: TestClient) -> list[tuple[str, str]]:
    """Every operation the app serves, read from its own OpenAPI schema."""
    schema = client.get("/openapi.json", headers={"authorization": f"Bearer {API}"})
    paths = schema.json()["paths"]
    return sorted((method.upper(), path) for path, ops in paths.items() for method in ops)


def call(client: TestClient, method: str, path: str, key: str | None):
    url = re.sub(r"\{[^}]+\}", "x", path)
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return client.request(method, url, headers=headers, json={} if method == "POST" else None)


def test_every_route_has_a_declared_role(secured: TestClient) -> None:
    declared = SUPER_ONLY | ADMIN_ONLY | READ | {("GET", p) for p in OPEN}
    assert set(routes(secured)) == declared


def test_the_role_matrix(secured: TestClient) -> None:
    for method, path in routes(secured):
        without = call(secured, method, path, None)
        wrong = call(secured, method, path, "not-a-key")
        as_api = call(secured, method, path, API)
        as_admin = call(secured, method, path, ADMIN)
        as_super = call(secured, method, path, SUPER)
        where = f"{method} {path}"
        if path in OPEN:
            assert without.status_code == 200, where
            continue
        assert without.status_code == 401, where
        assert without.json()["error"]["code"] == "invalid_api_key", where
        assert without.headers["www-authenticate"] == "Bearer", where
        assert wrong.status_code == 401, where
        assert as_super.status_code not in (401, 403), where
        if (method, path) in SUPER_ONLY:
            for answer in (as_api, as_admin):
                assert answer.status_code == 403, where
                assert answer.json()["error"]["type"] == "permission_error", where
            continue
        assert as_admin.status_code not in (401, 403), where
        if (method, path) in ADMIN_ONLY:
            assert as_api.status_code == 403, where
            assert as_api.json()["error"]["type"] == "permission_error", where
        else:
            assert as_api.status_code not in (401, 403), where


@pytest.mark.parametrize(
    ("path", "with_key"),
    [("/openapi.json", 200), ("/docs", 200), ("/redoc", 200), ("/metrics", 200), ("/nowhere", 404)],
)
def test_docs_and_unknown_paths_need_a_key_too(
    secured: TestClient, path: str, with_key: int
) -> None:
    response = secured.get(path)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert secured.get(path, headers={"authorization": f"Bearer {API}"}).status_code == with_key


def test_the_schema_declares_the_bearer_scheme_and_the_auth_answers(secured: TestClient) -> None:
    schema = secured.get("/openapi.json", headers={"authorization": f"Bearer {API}"}).json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            where = f"{method} {path}"
            if path in OPEN:
                assert "security" not in op, where
                continue
            key = (method.upper(), path)
            role = "super" if key in SUPER_ONLY else "admin" if key in ADMIN_ONLY else "api"
            assert op["security"] == [{"HTTPBearer": [role]}], where
            assert "401" in op["responses"], where
            if key in ADMIN_ONLY | SUPER_ONLY:
                assert "403" in op["responses"], where
            if method == "post":
                assert {"408", "413"} <= set(op["responses"]), where
    # Quotas: too many queued jobs (429), too many adapters (413).
    assert "429" in schema["paths"]["/v1/fine-tuning/jobs"]["post"]["responses"]
    assert "413" in schema["paths"]["/v1/adapters"]["post"]["responses"]


def test_other_schemes_and_blank_keys_are_refused(secured: TestClient) -> None:
    for header in ("Basic YWRtaW4=", f"Token {ADMIN}", "Bearer", "Bearer   ", ADMIN):
        response = secured.get("/v1/model", headers={"authorization": header})
        assert response.status_code == 401, header
        assert response.json()["error"]["code"] == "invalid_api_key", header


def test_auth_is_off_when_no_keys_are_set(client: TestClient) -> None:
    assert client.get("/v1/model").status_code == 200


def test_keys_come_comma_separated_from_the_environment(monkeypatch) -> None:
    from app.settings import Settings

    # Keys no path can contain: repr(settings) also shows the checkout's folders (base_model).
    first, second, third = "k3y-Qx7vZ", "k3y-Wp2rJ", "k3y-Ht9mB"
    monkeypatch.setenv("LORASERVE_ADMIN_KEYS", f"{first}, {second},")
    monkeypatch.setenv("LORASERVE_API_KEYS", third)
    settings = Settings()
    assert [k.get_secret_value() for k in settings.admin_keys] == [first, second]
    assert [k.get_secret_value() for k in settings.api_keys] == [third]
    assert settings.auth_enabled
    assert not any(key in repr(settings) for key in (first, second, third))
