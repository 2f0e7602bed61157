"""What a client hears when generation fails inside the server: a generic message in the
envelope (a 503 before the answer starts, an error event in a running stream), never the
exception's own text, which the log keeps under the request id."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from support.gen_helpers import write_tiny_causal_lm

SECRET = "probability tensor contains either inf, nan or element < 0 at /srv/secret/path"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    base = write_tiny_causal_lm(tmp_path / "tiny-llama")
    settings = Settings(
        base_model=base, adapters_dir=tmp_path / "a", data_dir=tmp_path / "d", device="cpu"
    )
    with TestClient(create_app(settings)) as c:
        yield c


def fail_after(client: TestClient, steps: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the engine's forward raise from its `steps`-th call on."""
    forward = client.app.state.services.generation.forward  # type: ignore[attr-defined]
    real, calls = forward.hidden, [0]

    def hidden(*args: Any) -> Any:
        calls[0] += 1
        if calls[0] > steps:
            raise RuntimeError(SECRET)
        return real(*args)

    monkeypatch.setattr(forward, "hidden", hidden)


def test_a_failure_before_the_answer_is_a_generic_503(client, monkeypatch, caplog) -> None:
    fail_after(client, 0, monkeypatch)
    answer = client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 4})
    assert answer.status_code == 503
    error = answer.json()["error"]
    assert error["code"] == "unavailable" and "secret" not in answer.text
    assert "logged" in error["message"]
    assert SECRET in caplog.text  # the cause stays in the process's log


def test_a_failure_inside_a_stream_is_a_generic_error_event(client, monkeypatch) -> None:
    fail_after(client, 3, monkeypatch)
    # Greedy: a sampled token of the random tiny model can be half a character, held back
    # until the next, and three such tokens would leave the failure before the first event.
    body = {"prompt": "Hello", "max_tokens": 50, "ignore_eos": True, "stream": True}
    body["temperature"] = 0
    with client.stream("POST", "/v1/completions", json=body) as answer:
        assert answer.status_code == 200
        events = [line[6:] for line in answer.iter_lines() if line.startswith("data: ")]
    assert "secret" not in "".join(events)
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == "unavailable" and "logged" in error["message"]
