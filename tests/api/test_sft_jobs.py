"""SFT through HTTP on a tiny Llama: chat datasets in, a job whose events carry exact match, and
the adapter answering exactly what it was taught, at once; bad datasets refused, nothing kept."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.api.test_jobs import create, wait_for
from tests.gen_helpers import write_tiny_causal_lm
from tests.training.test_sft import ROWS


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_causal_lm(tmp_path_factory.mktemp("llama") / "tiny-llama", seed=1)


@pytest.fixture
def client(tiny_llama: Path, tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        base_model=tiny_llama, adapters_dir=tmp_path / "adapters", data_dir=tmp_path / "data",
        device="cpu", max_dataset_rows=20,
    )  # fmt: skip
    with TestClient(create_app(settings)) as c:
        yield c


def upload(client: TestClient, rows: list[object]) -> str:
    data = "\n".join(json.dumps(r) for r in rows).encode()
    response = client.post("/v1/datasets", files={"file": ("chats.jsonl", data)})
    assert response.status_code == 201, response.text
    assert response.json()["format"] == "chat"
    return str(response.json()["id"])


def answer(client: TestClient, model: str, row: dict) -> str:
    if "messages" in row:
        body = {
            "model": model,
            "messages": row["messages"][:-1],
            "temperature": 0,
            "max_tokens": 12,
        }
        got = client.post("/v1/chat/completions", json=body).json()
        return str(got["choices"][0]["message"]["content"])
    body = {"model": model, "prompt": row["prompt"], "temperature": 0, "max_tokens": 12}
    return str(client.post("/v1/completions", json=body).json()["choices"][0]["text"])


def test_an_sft_job_teaches_the_answers_and_serves_them_at_once(client: TestClient) -> None:
    data = upload(client, ROWS)
    base = client.get("/v1/model").json()["name"]
    before = [answer(client, base, r) for r in ROWS]
    hp = {"rank": 8, "alpha": 16, "epochs": 30, "batch_size": 4, "learning_rate": 2e-2, "seed": 1,
          "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                             "down_proj"]}  # fmt: skip
    job = create(client, "taught", data, validation_dataset=data, hyperparameters=hp).json()
    assert job["hyperparameters"]["loss"] == "sft"
    done = wait_for(client, job["id"], "succeeded", "failed", timeout=120)
    assert done["status"] == "succeeded", done["error"]
    assert done["progress"]["validation_exact_match"] == 1.0
    events = client.get(f"/v1/fine-tuning/jobs/{job['id']}/events").json()["data"]
    metrics = [e["data"] for e in events if e["type"] == "metrics"]
    assert len(metrics) == 30 and metrics[0]["validation_exact_match"] == 0.0
    references = [
        r["messages"][-1]["content"] if "messages" in r else r["completion"] for r in ROWS
    ]
    assert before != references
    assert [answer(client, "taught", r) for r in ROWS] == references
    models = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert "taught" in models


def test_sft_defaults_are_peft_s(client: TestClient) -> None:
    data = upload(client, ROWS)
    job = create(client, "defaults", data, hyperparameters={"epochs": 1}).json()
    hp = job["hyperparameters"]
    assert hp["loss"] == "sft"
    assert hp["target_modules"] == [
        f"model.layers.{i}.self_attn.{m}" for i in range(2) for m in ("q_proj", "v_proj")
    ]
    wait_for(client, job["id"], "succeeded", "failed", timeout=60)


@pytest.mark.parametrize(
    ("rows", "words"),
    [
        ([{"messages": [{"role": "user", "content": "hi"}]}], "row 0 has no assistant turn"),
        ([ROWS[0], {"messages": [{"role": "tool", "content": "x"}]}], "row 1, message 0: role"),
        ([{"anchor": "a", "positive": "b"}], 'must be {"messages": [...]} or'),
        ([{"inputs": [[1.0]], "targets": [[1.0]]}], "must be"),
    ],
)
def test_bad_sft_datasets_are_refused_and_nothing_is_stored(
    client: TestClient, rows: list[object], words: str
) -> None:
    data = "\n".join(json.dumps(r) for r in rows).encode()
    response = client.post("/v1/datasets", files={"file": ("bad.jsonl", data)})
    assert response.status_code == 422
    assert words in response.json()["error"]["message"]
    assert client.get("/v1/datasets").json()["data"] == []


def test_a_vector_loss_on_a_decoder_is_refused(client: TestClient) -> None:
    data = upload(client, ROWS)
    response = create(client, "nope", data, hyperparameters={"loss": "mse"})
    assert response.status_code == 422
    assert "use one of ['sft']" in response.json()["error"]["message"]
    assert client.get("/v1/fine-tuning/jobs").json()["data"] == []
