"""Datasets and fine-tuning jobs on a text base (a tiny BERT): text pairs in, a contrastive job,
recall@1 in the events, the adapter served at once and loadable by PEFT as it was trained."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from support.helpers import write_tiny_text_model
from support.training import PAIRS, create, wait_for

QV = [f"encoder.layer.{i}.attention.self.{m}" for i in range(2) for m in ("query", "value")]


@pytest.fixture(scope="module")
def tiny_text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_text_model(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture
def text_client(tiny_text: Path, tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        base_model=tiny_text, adapters_dir=tmp_path / "adapters", data_dir=tmp_path / "data",
        device="cpu", max_dataset_rows=20,
    )  # fmt: skip
    with TestClient(create_app(settings)) as c:
        yield c


def jsonl(rows: list[object]) -> bytes:
    return "\n".join(json.dumps(r) for r in rows).encode()


def upload(client: TestClient, rows: list[object] = PAIRS) -> str:
    response = client.post("/v1/datasets", files={"file": ("pairs.jsonl", jsonl(rows))})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_pairs_upload_as_a_file_or_a_body(text_client: TestClient) -> None:
    first = text_client.post("/v1/datasets", files={"file": ("p.jsonl", jsonl(PAIRS))}).json()
    assert {k: first[k] for k in ("rows", "format", "input_dim", "output_dim", "filename")} == {
        "rows": 8, "format": "text_pairs", "input_dim": None, "output_dim": None,
        "filename": "p.jsonl",
    }  # fmt: skip
    as_json = text_client.post("/v1/datasets", json=PAIRS)
    as_jsonl = text_client.post(
        "/v1/datasets", content=jsonl(PAIRS), headers={"content-type": "application/jsonl"}
    )
    assert as_json.status_code == as_jsonl.status_code == 201
    assert as_json.json()["rows"] == as_jsonl.json()["rows"] == 8
    assert len(text_client.get("/v1/datasets").json()["data"]) == 3


@pytest.mark.parametrize(
    ("kwargs", "status", "code", "words"),
    [
        ({"json": {"inputs": [[1.0]], "targets": [[1.0]]}}, 422, "invalid_input",
         "unknown keys ['inputs', 'targets']"),
        ({"json": PAIRS[:1]}, 422, "invalid_input", "at least 2"),
        ({"json": [*PAIRS, {"anchor": "", "positive": "x"}]}, 422, "invalid_input", "row 8"),
        ({"json": PAIRS * 3}, 413, "dataset_too_large", "the limit is 20"),
        ({"content": b"[{", "headers": {"content-type": "application/json"}}, 400,
         "malformed_body", "JSONL"),
        ({"content": jsonl(PAIRS), "headers": {"content-type": "text/plain"}}, 415,
         "unsupported_media_type", "text pairs"),
    ],
)  # fmt: skip
def test_bad_pairs_are_refused_and_nothing_is_stored(
    text_client: TestClient, kwargs, status: int, code: str, words: str
) -> None:
    response = text_client.post("/v1/datasets", **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and words in error["message"]
    assert text_client.get("/v1/datasets").json()["data"] == []


def test_job_defaults_on_a_text_base_are_contrastive_on_query_and_value(
    text_client: TestClient,
) -> None:
    response = create(text_client, "defaults", upload(text_client))
    assert response.status_code == 201, response.text
    hp = response.json()["hyperparameters"]
    assert (hp["loss"], hp["target_modules"], hp["alpha"]) == ("contrastive", QV, 8.0)
    named = create(text_client, "short-names", upload(text_client),
                   hyperparameters={"target_modules": ["key", "output.dense"]})  # fmt: skip
    assert named.status_code == 201, named.text
    assert named.json()["hyperparameters"]["target_modules"] == [
        f"encoder.layer.{i}.{m}" for i in range(2)
        for m in ("attention.self.key", "attention.output.dense", "output.dense")
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("hyperparameters", "param", "words"),
    [
        ({"loss": "mse"}, "hyperparameters.loss", "does not fit a base that trains on text pairs"),
        ({"target_modules": ["conv"]}, "hyperparameters.target_modules", "match no linear"),
    ],
)
def test_job_that_does_not_fit_a_text_base_is_refused(
    text_client: TestClient, hyperparameters, param: str, words: str
) -> None:
    response = create(text_client, "nope", upload(text_client), hyperparameters=hyperparameters)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == param
    assert words in response.json()["error"]["message"]
    assert text_client.get("/v1/fine-tuning/jobs").json()["data"] == []


def test_job_trains_reports_recall_and_serves_the_adapter(
    text_client: TestClient, tiny_text: Path, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModel

    train = upload(text_client)
    hp = {"epochs": 20, "batch_size": 8, "learning_rate": 1e-2, "rank": 4}
    job = create(text_client, "tuned", train, validation_dataset=train, hyperparameters=hp).json()
    done = wait_for(text_client, job["id"], "succeeded", "failed", timeout=120)
    assert done["status"] == "succeeded", done
    assert done["progress"]["validation_recall_at_1"] == 1.0
    events = text_client.get(f"/v1/fine-tuning/jobs/{job['id']}/events").json()["data"]
    recalls = [e["data"]["validation_recall_at_1"] for e in events if e["type"] == "metrics"]
    assert len(recalls) == 20 and recalls[-1] == 1.0
    assert text_client.get("/v1/adapters/tuned").json()["source"] == "training"

    texts = [p["anchor"] for p in PAIRS] + [p["positive"] for p in PAIRS]
    served = text_client.post("/v1/embeddings", json={"model": "tuned", "input": texts}).json()
    got = torch.tensor([d["embedding"] for d in served["data"]])
    archive = text_client.get("/v1/adapters/tuned/download").content
    zipfile.ZipFile(io.BytesIO(archive)).extractall(tmp_path / "tuned")
    peft = PeftModel.from_pretrained(
        AutoModel.from_pretrained(tiny_text, local_files_only=True), tmp_path / "tuned"
    ).eval()
    batch = text_client.app.state.services.family.text.tokenize(texts)  # type: ignore[attr-defined]
    with torch.no_grad():
        states = peft(input_ids=batch.ids, attention_mask=batch.mask).last_hidden_state
    mask = batch.mask.unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((states * mask).sum(1) / mask.sum(1), dim=1)
    assert (got - expected).abs().max().item() <= 1e-5


def test_pairs_and_contrastive_jobs_are_refused_on_a_vector_base(client: TestClient) -> None:
    response = client.post("/v1/datasets", json=PAIRS)
    assert response.status_code == 422, response.text
    x = torch.zeros(4, 16).tolist()
    ds = client.post("/v1/datasets", json={"inputs": x, "targets": torch.zeros(4, 4).tolist()})
    job = create(client, "c", ds.json()["id"], hyperparameters={"loss": "contrastive"})
    assert job.status_code == 422 and job.json()["error"]["param"] == "hyperparameters.loss"
    assert "trains on vectors" in job.json()["error"]["message"]
