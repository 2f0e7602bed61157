"""SFT through HTTP on a tiny Llama: chat datasets in, a job whose events carry exact match, and
the adapter answering exactly what it was taught, at once; bad datasets refused, nothing kept."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from support.chats import ROWS, answer, upload
from support.gen_helpers import write_tiny_causal_lm
from support.training import create, wait_for


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


def test_an_sft_job_teaches_the_answers_and_serves_them_at_once(
    client: TestClient, tiny_llama: Path
) -> None:
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
    assert_peft_answers_the_same(client, tiny_llama, "taught", ROWS, references)


def assert_peft_answers_the_same(
    client: TestClient, base_dir: Path, name: str, rows: list[dict], references: list[str]
) -> None:
    """The trained adapter, downloaded, loads into PEFT, whose greedy answers are the same."""
    import io
    import tempfile
    import zipfile

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(tempfile.mkdtemp())
    archive = client.get(f"/v1/adapters/{name}/download")
    assert archive.status_code == 200
    zipfile.ZipFile(io.BytesIO(archive.content)).extractall(folder)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), folder)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    for row, reference in zip(rows, references, strict=True):
        if "messages" in row:
            text = tokenizer.apply_chat_template(
                row["messages"][:-1], tokenize=False, add_generation_prompt=True
            )
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            ids = tokenizer(row["prompt"])["input_ids"]
        prompt = torch.tensor([ids])
        with torch.inference_mode():
            out = model.eval().generate(prompt, attention_mask=torch.ones_like(prompt),
                                        do_sample=False, max_new_tokens=12,
                                        pad_token_id=tokenizer.eos_token_id)  # fmt: skip
        new = out[0, prompt.shape[1] :]
        assert tokenizer.decode(new, skip_special_tokens=True) == reference
