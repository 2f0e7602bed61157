"""Generated requests for every operation of the app's own OpenAPI schema.

At least 1000 cases in all: no answer may be a 5xx, and every documented answer must match its
schema. Auth is on and the cases carry an admin key, so that every route's handler is reached.
Then stateful runs follow the schema's links: create an adapter, dataset or job, then read,
use, cancel or delete it, in sequences that Hypothesis chooses and shrinks.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import time
from pathlib import Path

import schemathesis
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from prometheus_client.parser import text_string_to_metric_families
from safetensors.torch import save
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from app.main import create_app
from app.settings import Settings
from support.helpers import TINY_SIZES, adapter_files, lora_tensors, peft_config, write_base_model

ADMIN = "fuzz-admin-key"
EXAMPLES_PER_OPERATION = 80  # x 13 operations that take input, + 6 without: over 1000 cases

# The schema is needed when tests are collected, so the app is built then, its lifespan entered
# once for the module (the client below) and left at exit.
_tmp = Path(tempfile.mkdtemp(prefix="loraserve-fuzz-"))
atexit.register(shutil.rmtree, _tmp, ignore_errors=True)
_app = create_app(
    Settings(
        base_model=write_base_model(_tmp / "base"),
        adapters_dir=_tmp / "adapters",
        data_dir=_tmp / "data",
        device="cpu",
        admin_keys=ADMIN,  # type: ignore[arg-type]
        max_request_rows=64,
    )
)
_clients: list[TestClient] = []


def _client() -> TestClient:
    """A client whose lifespan is running: schemathesis stops the app's own after its tests."""
    if not _clients or _app.state.services is None:
        client = TestClient(_app)
        client.__enter__()
        atexit.register(client.__exit__, None, None, None)
        _clients.append(client)
    return _clients[-1]


_client()

schema = schemathesis.openapi.from_asgi(
    "/openapi.json", _app, headers={"authorization": f"Bearer {ADMIN}"}
)
# Valid and invalid inputs both: every invalid one must come back a 4xx, never a 5xx.
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_no_server_errors_and_answers_match_the_schema(case) -> None:
    case.call_and_validate(
        headers={"authorization": f"Bearer {ADMIN}"},
        checks=[not_a_server_error, response_schema_conformance, content_type_conformance],
    )


# Random bytes never make a valid adapter or dataset, so no chain of links would ever start: the
# stateful run swaps in valid files under the generated names, and the rest stays generated.
_ADAPTER = adapter_files(
    peft_config(2, 4, ["layer1"]), lora_tensors(TINY_SIZES, ["layer1"], 2, seed=3)
)
_DATASET = save({"inputs": torch.randn(8, 16), "targets": torch.randn(8, 4)})
_Machine = schema.as_state_machine()


class Workflows(_Machine):  # type: ignore[misc, valid-type]
    def setup(self) -> None:
        # Every scenario starts from an empty service, so that Hypothesis can replay it.
        auth = {"authorization": f"Bearer {ADMIN}"}
        client = _client()
        for _ in range(500):
            jobs = client.get("/v1/fine-tuning/jobs?limit=1000", headers=auth).json()
            active = [j for j in jobs["data"] if j["status"] in ("queued", "running")]
            if not active:
                break
            for job in active:
                client.post(f"/v1/fine-tuning/jobs/{job['id']}/cancel", headers=auth)
            time.sleep(0.01)
        for kind, key in (("adapters", "name"), ("datasets", "id")):
            for item in client.get(f"/v1/{kind}", headers=auth).json()["data"]:
                client.delete(f"/v1/{kind}/{item[key]}", headers=auth)

    def before_call(self, case) -> None:
        if case.method == "POST" and case.path == "/v1/adapters":
            name = case.body.get("name") if isinstance(case.body, dict) else None
            case.body = {"name": name if isinstance(name, str) else "chained"}
            case.body["config"], case.body["weights"] = _ADAPTER
            case.media_type = "multipart/form-data"
        elif case.method == "POST" and case.path == "/v1/datasets":
            case.body = {"file": _DATASET}
            case.media_type = "multipart/form-data"

    def get_call_kwargs(self, case) -> dict:
        return {"headers": {"authorization": f"Bearer {ADMIN}"}}

    def validate_response(self, response, case, **kwargs) -> None:
        case.validate_response(
            response,
            checks=[not_a_server_error, response_schema_conformance, content_type_conformance],
        )


def _successes() -> dict[tuple[str, str], float]:
    """Answers under 300 per (method, route), from the service's own metrics."""
    text = _client().get("/metrics", headers={"authorization": f"Bearer {ADMIN}"}).text
    counts: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "loraserve_requests_total" and int(labels["status"]) < 300:
                key = (labels["method"], labels["route"])
                counts[key] = counts.get(key, 0) + sample.value
    return counts


def test_stateful_chains_of_create_read_use_delete() -> None:
    before = _successes()
    Workflows.run(
        settings=settings(
            max_examples=60,
            stateful_step_count=8,
            derandomize=True,  # the same sequences every run: what they reach is asserted below
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
    )
    after = _successes()
    # The chains were followed: reads of a created resource by its id succeeded. (Which links
    # the 60 scenarios take varies with the schema; setup's deletes are not counted.)
    linked = [
        ("GET", "/v1/adapters/{name}"),
        ("GET", "/v1/adapters/{name}/download"),
        ("GET", "/v1/datasets/{dataset_id}"),
        ("GET", "/v1/fine-tuning/jobs/{job_id}"),
        ("GET", "/v1/fine-tuning/jobs/{job_id}/events"),
        ("POST", "/v1/fine-tuning/jobs/{job_id}/cancel"),
    ]
    followed = sum(after.get(k, 0) - before.get(k, 0) for k in linked)
    assert followed >= 3, {k: after.get(k, 0) - before.get(k, 0) for k in linked}
