"""SIGKILL the real server mid-job; the restart marks the job and leaves every adapter intact."""

from __future__ import annotations

import hashlib
import signal
import time
from pathlib import Path

import httpx
import torch
from safetensors.torch import save

from tests.helpers import adapter_files, lora_tensors, peft_config, write_base_model
from tests.server import running_server


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def test_sigkill_during_training_leaves_the_job_interrupted_and_adapters_intact(
    tmp_path: Path,
) -> None:
    base = write_base_model(tmp_path / "base")
    store = tmp_path / "adapters"
    with running_server(tmp_path, base_model=str(base)) as server:
        client = httpx.Client(base_url=server.url)
        for i in range(2):
            targets = ["layer1", "layer2"]
            files = adapter_files(
                peft_config(4, 8, targets), lora_tensors([16, 8, 4], targets, 4, i)
            )
            response = client.post(
                "/v1/adapters",
                data={"name": f"earlier{i}"},
                files={"config": ("c", files[0]), "weights": ("w", files[1])},
            )
            assert response.status_code == 201
        before = digests(store)
        data = save({"inputs": torch.randn(256, 16), "targets": torch.randn(256, 4)})
        train = client.post("/v1/datasets", files={"file": ("d", data)}).json()["id"]
        job = client.post(
            "/v1/fine-tuning/jobs",
            json={
                "adapter_name": "victim",
                "training_dataset": train,
                "hyperparameters": {"epochs": 1000, "batch_size": 1},
            },
        ).json()
        deadline = time.monotonic() + 20
        while client.get(f"/v1/fine-tuning/jobs/{job['id']}").json()["progress"]["step"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(timeout=10)

    with running_server(tmp_path, base_model=str(base)) as server:
        client = httpx.Client(base_url=server.url)
        after = client.get(f"/v1/fine-tuning/jobs/{job['id']}").json()
        assert after["status"] == "failed" and after["error"]["code"] == "interrupted"
        assert client.get("/v1/adapters/victim").status_code == 404
        assert [a["name"] for a in client.get("/v1/adapters").json()["data"]] == [
            "earlier0",
            "earlier1",
        ]
    assert not (store / "victim").exists()
    assert digests(store) == before
