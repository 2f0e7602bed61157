"""Many adapters on disk: time to ready, resident memory, upload-to-first-prediction latency.

Run: .venv/bin/python bench/registry.py [--adapters 10000 --rank 4]
Writes the adapters straight to disk in the PEFT layout, starts the real server on them and on
an empty store (the baseline), and compares. Weights are read lazily, so 10,000 adapters on disk
should cost an index, not 10,000 adapters in memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch
from safetensors.torch import save

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.serve import server, write_adapters  # noqa: E402


def process_rss_mb(port_url: str) -> float:
    """VmRSS of the process listening on the server's port."""
    port = int(port_url.rsplit(":", 1)[1])
    inode = None
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if int(parts[1].split(":")[1], 16) == port and parts[3] == "0A":
                inode = parts[9]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            return int(line.split()[1]) / 1024
            except OSError:
                continue
    raise RuntimeError("server process not found")


def start_and_measure(env: dict[str, str]) -> tuple[float, float]:
    start = time.perf_counter()
    with server("app.main:app", env) as url:
        ready = time.perf_counter() - start
        return ready, process_rss_mb(url)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--adapters", type=int, default=10_000)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "registry-cpu.json"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        start = time.perf_counter()
        names = write_adapters(tmp_path / "many", [1001, 1000, 1000], args.adapters, args.rank)
        print(f"wrote {len(names)} adapters in {time.perf_counter() - start:.1f}s")
        common = {"LORASERVE_DEVICE": "cpu", "LORASERVE_DATA_DIR": str(tmp_path / "data")}
        empty_ready, empty_rss = start_and_measure(
            {**common, "LORASERVE_ADAPTERS_DIR": str(tmp_path / "empty")}
        )
        many_env = {**common, "LORASERVE_ADAPTERS_DIR": str(tmp_path / "many")}
        many_ready, many_rss = start_and_measure(many_env)

        # Upload a new adapter, then predict with it at once: the time until the answer.
        latencies = []
        with server("app.main:app", many_env) as url, httpx.Client(base_url=url) as client:
            listed = client.get("/v1/adapters").json()["data"]
            assert len(listed) == args.adapters, len(listed)
            gen = torch.Generator().manual_seed(3)
            config = (tmp_path / "many" / names[0] / "adapter_config.json").read_bytes()
            row = {"inputs": torch.randn(1, 1001, generator=gen).tolist()}
            for i in range(23):
                tensors = {
                    "base_model.model.layer1.lora_A.weight": torch.randn(args.rank, 1001, generator=gen),
                    "base_model.model.layer1.lora_B.weight": torch.randn(1000, args.rank, generator=gen),
                    "base_model.model.layer2.lora_A.weight": torch.randn(args.rank, 1000, generator=gen),
                    "base_model.model.layer2.lora_B.weight": torch.randn(1000, args.rank, generator=gen),
                }  # fmt: skip
                weights = save(tensors)
                start = time.perf_counter()
                response = client.post(
                    "/v1/adapters",
                    data={"name": f"fresh{i}"},
                    files={"config": ("c", config), "weights": ("w", weights)},
                )
                response.raise_for_status()
                client.post("/v1/predict", json={**row, "adapter": f"fresh{i}"}).raise_for_status()
                if i >= 3:
                    latencies.append((time.perf_counter() - start) * 1000)
            after_rss = process_rss_mb(url)
    summary = {
        "adapters": args.adapters,
        "rank": args.rank,
        "ready_s_empty_store": round(empty_ready, 2),
        "ready_s": round(many_ready, 2),
        "rss_mb_empty_store": round(empty_rss, 1),
        "rss_mb": round(many_rss, 1),
        "rss_growth_mb": round(many_rss - empty_rss, 1),
        "rss_mb_after_uploads": round(after_rss, 1),
        "upload_to_first_prediction_ms_p50": round(statistics.median(latencies), 2),
        "upload_to_first_prediction_ms_max": round(max(latencies), 2),
    }
    for key, value in summary.items():
        print(f"{key:36s} {value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}"
    args.out.write_text(json.dumps({"machine": machine, "summary": summary}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
