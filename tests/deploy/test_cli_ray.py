"""`loraserve serve --ray` as a user runs it: a local Ray cluster on 127.0.0.1, gone on SIGTERM."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import httpx
import psutil
import torch

from support.helpers import TINY_SIZES, adapter_files, lora_tensors, peft_config, reference_forward
from support.server import free_port, launched


def test_serve_ray_starts_a_local_cluster_and_stops_it(tmp_path: Path, base_folder: Path) -> None:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RAY_")},
        "LORASERVE_ADAPTERS_DIR": str(tmp_path / "adapters"),
        "LORASERVE_DATA_DIR": str(tmp_path / "data"),
        "LORASERVE_DEVICE": "cpu",
    }
    command = [
        str(Path(sys.executable).parent / "loraserve"), "serve", "--ray", "--host", "127.0.0.1",
        "--port", str(port), "--base-model", str(base_folder), "--replicas", "1", "--trainers", "0",
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    # Without this process's RAY_ settings: the command starts a cluster of its own.
    log = tmp_path / "serve.log"
    with launched(command, url, env, 180, log, inherit=False, stop_s=60) as process:
        ours = [process.pid, *(c.pid for c in psutil.Process(process.pid).children(recursive=True))]
        config = peft_config(2, 4.0, ["layer1", "layer2"])
        tensors = lora_tensors(TINY_SIZES, ["layer1", "layer2"], 2, seed=7)
        files = adapter_files(config, tensors)
        with httpx.Client(base_url=url, timeout=60) as client:
            r = client.post(
                "/v1/adapters", data={"name": "cli"},
                files={"config": ("c.json", files[0]), "weights": ("w.safetensors", files[1])},
            )  # fmt: skip
            assert r.status_code == 201, r.text
            x = torch.randn(2, TINY_SIZES[0])
            r = client.post("/v1/predict", json={"inputs": x.tolist(), "adapter": "cli"})
            assert r.status_code == 200, r.text
        expected = reference_forward(base_folder, x, config, tensors).float()
        torch.testing.assert_close(
            torch.tensor(r.json()["outputs"]), expected, atol=1e-5, rtol=1e-4
        )
        listening = [
            c.laddr
            for c in psutil.net_connections(kind="tcp")
            if c.pid in ours and c.status == psutil.CONN_LISTEN
        ]
        assert listening and all(a.ip in ("127.0.0.1", "::ffff:127.0.0.1") for a in listening)
    assert process.returncode == 0, (tmp_path / "serve.log").read_text()[-3000:]
    deadline = time.monotonic() + 30
    while [p for p in ours if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]:
        assert time.monotonic() < deadline, "the local Ray cluster outlived its command"
        time.sleep(0.5)
