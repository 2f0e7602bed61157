"""The container's exact command, run as a real server on a free port, driven over HTTP."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from app.settings import EMBEDDED_MODEL
from tests.helpers import adapter_files, lora_tensors, peft_config, reference_forward

ROOT = Path(__file__).resolve().parent.parent
SEED_SIZES = [1001, 1000, 1000]


def container_command() -> list[str]:
    """The CMD of the Dockerfile, exactly."""
    match = re.search(r"^CMD (\[.*\])\s*$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert match, "the Dockerfile has no exec-form CMD"
    return json.loads(match.group(1))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path, float]]:
    store = tmp_path / "adapters"
    (store / "broken").mkdir(parents=True)  # a bad folder must be skipped, not fatal
    (store / "broken" / "adapter_config.json").write_text("{")
    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "UVICORN_HOST": "127.0.0.1",
        "UVICORN_PORT": str(port),
        "LORASERVE_ADAPTERS_DIR": str(store),
        "LORASERVE_DATA_DIR": str(tmp_path / "data"),
        "LORASERVE_DEVICE": "cpu",
    }
    start = time.perf_counter()
    proc = subprocess.Popen(container_command(), cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            assert proc.poll() is None, "the server exited during start-up"
            assert time.perf_counter() - start < 30, "not ready within 30 s"
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        yield url, store, time.perf_counter() - start
    finally:
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal as its exit status.
        assert proc.wait(timeout=15) in (0, -signal.SIGTERM)


def test_container_command_serves_the_embedded_model(server) -> None:
    url, store, _ = server
    model = httpx.get(f"{url}/v1/model").json()
    assert model["input_dim"] == 1001 and model["output_dim"] == 1000
    assert httpx.get(f"{url}/v1/adapters").json()["data"] == []

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
    assert (store / "shifted" / "adapter_model.safetensors").is_file()

    x = torch.randn(3, 1001)
    for mode in ("unmerged", "merged"):
        response = httpx.post(
            f"{url}/v1/predict", json={"inputs": x.tolist(), "adapter": "shifted", "mode": mode}
        )
        assert response.status_code == 200, response.text
        out = torch.tensor(response.json()["outputs"], dtype=torch.float64)
        ref = reference_forward(EMBEDDED_MODEL, x, config, tensors)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-3)
