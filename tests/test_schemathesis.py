"""Generated requests for every operation of the app's own OpenAPI schema.

At least 1000 cases in all: no answer may be a 5xx, and every documented answer must match its
schema. Auth is on and the cases carry an admin key, so that every route's handler is reached.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from app.main import create_app
from app.settings import Settings
from tests.helpers import write_base_model

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
_client = TestClient(_app)
_client.__enter__()
atexit.register(_client.__exit__, None, None, None)

schema = schemathesis.openapi.from_asgi("/openapi.json", _app)
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
