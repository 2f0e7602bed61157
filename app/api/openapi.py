"""The OpenAPI schema says what the middleware does too: who may call, and which errors come."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
_DESCRIPTIONS = {
    "401": "no API key, or an unknown one",
    "403": "the key's role is not enough: this needs an admin key (or a super-admin key)",
    "408": "the body did not arrive in time",
    "413": "the body is over this route's limit",
    "422": "invalid input, or a query parameter the route does not take",
    "503": "overloaded or still starting; retry after Retry-After seconds",
}


def _answers(op: dict[str, Any], method: str) -> list[str]:
    roles = {role for need in op.get("security", []) for scopes in need.values() for role in scopes}
    if not roles:  # /healthz, /readyz: open, and answered whatever the load
        return ["422"]
    codes = ["401", "422", "503"]
    if roles & {"admin", "super"}:
        codes.append("403")
    if method in ("post", "put", "patch"):
        codes += ["408", "413"]
    return codes


# OpenAPI links: what a created resource's answer feeds into (clients, and stateful fuzzing).
_NAME = {"name": "$response.body#/name"}
_DATASET = {"dataset_id": "$response.body#/id"}
_JOB = {"job_id": "$response.body#/id"}
_LINKS: dict[tuple[str, str], dict[str, tuple[str, str, dict[str, Any]]]] = {
    ("post", "/v1/adapters"): {
        "ReadAdapter": ("get", "/v1/adapters/{name}", {"parameters": _NAME}),
        "DownloadAdapter": ("get", "/v1/adapters/{name}/download", {"parameters": _NAME}),
        "DeleteAdapter": ("delete", "/v1/adapters/{name}", {"parameters": _NAME}),
    },
    ("post", "/v1/datasets"): {
        "ReadDataset": ("get", "/v1/datasets/{dataset_id}", {"parameters": _DATASET}),
        "DeleteDataset": ("delete", "/v1/datasets/{dataset_id}", {"parameters": _DATASET}),
        "TrainOnDataset": (
            "post",
            "/v1/fine-tuning/jobs",
            {
                "requestBody": {
                    "adapter_name": "$response.body#/id",  # a dataset id is a valid name
                    "training_dataset": "$response.body#/id",
                    "hyperparameters": {"rank": 1, "epochs": 1},
                }
            },
        ),
    },
    ("post", "/v1/fine-tuning/jobs"): {
        "ReadJob": ("get", "/v1/fine-tuning/jobs/{job_id}", {"parameters": _JOB}),
        "CancelJob": ("post", "/v1/fine-tuning/jobs/{job_id}/cancel", {"parameters": _JOB}),
        "ReadJobEvents": ("get", "/v1/fine-tuning/jobs/{job_id}/events", {"parameters": _JOB}),
    },
}


def _add_links(spec: dict[str, Any]) -> None:
    for (method, path), links in _LINKS.items():
        answer = spec["paths"][path][method]["responses"]["201"]
        answer["links"] = {
            name: {"operationId": spec["paths"][to_path][to_method]["operationId"], **fields}
            for name, (to_method, to_path, fields) in links.items()
        }


def install_openapi(app: FastAPI) -> None:
    """Add the error answers that the guards in front of every route can give."""

    def schema() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, routes=app.routes)
            for ops in spec["paths"].values():
                for method, op in ops.items():
                    for code in _answers(op, method):
                        op["responses"].setdefault(
                            code, {"description": _DESCRIPTIONS[code], "content": _ERROR}
                        )
            _add_links(spec)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = schema  # type: ignore[method-assign]
