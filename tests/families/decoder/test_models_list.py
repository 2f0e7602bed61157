"""GET /v1/models offers only adapters the base in service can serve: a decoder started on the
folders where the seed model's adapters live lists none of them as chat models."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from support.gen_helpers import write_tiny_causal_lm, write_tuned_adapter
from support.helpers import write_base_model
from support.http import make_files, upload


def test_models_lists_only_the_adapters_that_fit_the_base(tmp_path: Path) -> None:
    state = {"adapters_dir": tmp_path / "adapters", "data_dir": tmp_path / "data", "device": "cpu"}
    vectors = Settings(base_model=write_base_model(tmp_path / "seed"), **state)
    with TestClient(create_app(vectors)) as c:
        _, _, (config, weights) = make_files()
        assert upload(c, "seed-adapter", config, weights).status_code == 201

    llama = write_tiny_causal_lm(tmp_path / "tiny-llama")
    peft = write_tuned_adapter(llama, tmp_path / "qvd")
    with TestClient(create_app(Settings(base_model=llama, **state))) as c:
        config, weights = (peft / "adapter_config.json", peft / "adapter_model.safetensors")
        assert upload(c, "qvd", config.read_bytes(), weights.read_bytes()).status_code == 201
        models = c.get("/v1/models")
        adapters = {a["name"]: a["status"] for a in c.get("/v1/adapters").json()["data"]}
        hello = [{"role": "user", "content": "Hello"}]
        chat = c.post("/v1/chat/completions", json={"model": "seed-adapter", "messages": hello})

    assert models.status_code == 200
    assert [(m["id"], m["parent"]) for m in models.json()["data"]] == [
        ("tiny-llama", None),
        ("qvd", "tiny-llama"),
    ]
    # Still listed where an admin manages adapters, so it can be deleted or replaced.
    assert adapters == {"seed-adapter": "broken", "qvd": "ready"}
    assert (chat.status_code, chat.json()["error"]["code"]) == (409, "adapter_broken")
