"""The container's exact command, run as a real server on a free port, driven over HTTP."""

from __future__ import annotations

from pathlib import Path

import httpx
import torch

from app.settings import EMBEDDED_MODEL
from support.helpers import adapter_files, lora_tensors, peft_config, reference_forward
from support.server import running_server

SEED_SIZES = [1001, 1000, 1000]


def test_container_command_serves_the_embedded_model(tmp_path: Path) -> None:
    store = tmp_path / "adapters"
    (store / "broken").mkdir(parents=True)  # a bad folder is reported and left, not fatal
    (store / "broken" / "adapter_config.json").write_text("{")
    with running_server(tmp_path) as server:
        url = server.url
        model = httpx.get(f"{url}/v1/model").json()
        assert model["input_dim"] == 1001 and model["output_dim"] == 1000
        listed = httpx.get(f"{url}/v1/adapters").json()["data"]
        assert listed == []

        targets = ["layer1", "layer2"]
        config = peft_config(8, 16, targets)
        tensors = lora_tensors(SEED_SIZES, targets, 8, seed=7)
        config_bytes, weights_bytes = adapter_files(config, tensors)
        response = httpx.post(
            f"{url}/v1/adapters",
            data={"name": "shifted"},
            files={
                "config": ("adapter_config.json", config_bytes),
                "weights": ("w.safetensors", weights_bytes),
            },
        )
        assert response.status_code == 201, response.text
        version = response.json()["version"]
        assert (store / ".store" / "default" / version / "adapter_model.safetensors").is_file()

        x = torch.randn(3, 1001)
        for mode in ("unmerged", "merged"):
            body = {"inputs": x.tolist(), "adapter": "shifted", "mode": mode}
            response = httpx.post(f"{url}/v1/predict", json=body)
            assert response.status_code == 200, response.text
            out = torch.tensor(response.json()["outputs"], dtype=torch.float64)
            ref = reference_forward(EMBEDDED_MODEL, x, config, tensors)
            torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-3)
