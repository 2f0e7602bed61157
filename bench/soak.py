"""Soak: the real server for a bounded time at concurrency 64 with mixed adapters, while other
adapters are uploaded and deleted. Reports errors (target: no 5xx, no wrong result), p99 per
window and resident memory over time (target: flat).

Run: .venv/bin/python bench/soak.py [--duration 120] [--concurrency 64]
Every answer for a stable adapter is checked against outputs computed here, longhand.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import orjson
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.settings import EMBEDDED_MODEL  # noqa: E402
from bench.harness import bin_path, server  # noqa: E402
from support.helpers import adapter_files, lora_tensors, peft_config, reference_forward  # noqa: E402

SIZES = [1001, 1000, 1000]


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=120)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--adapters", type=int, default=16)
    parser.add_argument("--window", type=float, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "soak-cpu.json")
    args = parser.parse_args()
    targets = ["layer1", "layer2"]
    specs = {}
    for i in range(args.adapters):
        config = peft_config(8, 16.0, targets)
        specs[f"s{i}"] = (config, lora_tensors(SIZES, targets, 8, seed=i))
    pool = torch.randn(32, SIZES[0], generator=torch.Generator().manual_seed(0))
    print("computing the reference outputs ...", flush=True)
    expected = {
        name: reference_forward(EMBEDDED_MODEL, pool, config, tensors).float()
        for name, (config, tensors) in specs.items()
    }
    bodies = {
        (name, i): orjson.dumps({"inputs": [pool[i].tolist()], "adapter": name})
        for name in specs
        for i in range(len(pool))
    }
    churn_files = adapter_files(peft_config(4, 8.0, targets), lora_tensors(SIZES, targets, 4, 99))

    with tempfile.TemporaryDirectory() as tmp:
        env = {
            "LORASERVE_DEVICE": "cpu",
            "LORASERVE_ADAPTERS_DIR": str(Path(tmp) / "adapters"),
            "LORASERVE_DATA_DIR": str(Path(tmp) / "data"),
        }
        with server([bin_path("loraserve"), "serve"], env) as url:
            with httpx.Client(base_url=url, timeout=60) as client:
                for name, (config, tensors) in specs.items():
                    files = adapter_files(config, tensors)
                    client.post(
                        "/v1/adapters",
                        data={"name": name},
                        files={"config": ("c", files[0]), "weights": ("w", files[1])},
                    ).raise_for_status()
            windows: list[dict] = []
            statuses: Counter[int] = Counter()
            wrong = 0
            latencies: list[float] = []
            churn = Counter()
            stop_at = time.perf_counter() + args.duration

            async def predictor(k: int) -> None:
                nonlocal wrong
                rng = random.Random(k)
                headers = {"content-type": "application/json"}
                async with httpx.AsyncClient(base_url=url, timeout=60) as c:
                    while time.perf_counter() < stop_at:
                        name, i = rng.choice(list(specs)), rng.randrange(len(pool))
                        start = time.perf_counter()
                        r = await c.post("/v1/predict", content=bodies[(name, i)], headers=headers)
                        latencies.append((time.perf_counter() - start) * 1000)
                        statuses[r.status_code] += 1
                        if r.status_code == 200:
                            got = torch.tensor(orjson.loads(r.content)["outputs"][0])
                            if not torch.allclose(got, expected[name][i], rtol=1e-4, atol=1e-3):
                                wrong += 1

            async def churner() -> None:
                rng = random.Random(7)
                async with httpx.AsyncClient(base_url=url, timeout=60) as c:
                    while time.perf_counter() < stop_at:
                        name = f"churn{rng.randrange(8)}"
                        if rng.random() < 0.5:
                            r = await c.post(
                                "/v1/adapters", params={"overwrite": "true"}, data={"name": name},
                                files={"config": ("c", churn_files[0]), "weights": ("w", churn_files[1])},
                            )  # fmt: skip
                        else:
                            r = await c.delete(f"/v1/adapters/{name}")
                        churn[r.status_code] += 1
                        await asyncio.sleep(0.05)

            async def sampler() -> None:
                begin = time.perf_counter()
                while time.perf_counter() < stop_at:
                    await asyncio.sleep(args.window)
                    window = list(latencies)
                    latencies.clear()
                    ordered = sorted(window) or [0.0]
                    row = {
                        "t_s": round(time.perf_counter() - begin, 1),
                        "requests_per_s": round(len(window) / args.window, 1),
                        "p50_ms": round(statistics.median(ordered), 2),
                        "p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))], 2),
                        "rss_mb": round(process_rss_mb(url), 1),
                        "wrong": wrong,
                        "5xx": sum(n for s, n in statuses.items() if s >= 500),
                    }
                    windows.append(row)
                    print(json.dumps(row), flush=True)

            async def run() -> None:
                await asyncio.gather(
                    *(predictor(k) for k in range(args.concurrency)), churner(), sampler()
                )

            asyncio.run(run())
    rss = [w["rss_mb"] for w in windows]
    summary = {
        "duration_s": args.duration,
        "concurrency": args.concurrency,
        "statuses": dict(statuses),
        "churn_statuses": dict(churn),
        "wrong_results": wrong,
        "server_errors": sum(n for s, n in statuses.items() if s >= 500),
        "rss_first_mb": rss[0] if rss else None,
        "rss_last_mb": rss[-1] if rss else None,
        "rss_max_mb": max(rss) if rss else None,
    }
    print(json.dumps(summary, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}"
    args.out.write_text(
        json.dumps({"machine": machine, "summary": summary, "windows": windows}, indent=2) + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
