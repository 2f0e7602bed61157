"""Core serving figures on the seed model: start-up, single-row latency, mixed vs base batches.

Run: .venv/bin/python bench/core.py [--adapters 32 --rank 8 --rows 256]
Starts the real server (uvicorn, the container's command) on a free port with a fresh store,
registers adapters over HTTP, then times requests end to end and the model alone in-process.
Ratios compare against the base model measured in the same run.
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
from collections.abc import Callable
from pathlib import Path

import httpx
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.engine import ComputeThread  # noqa: E402
from app.services import build_services  # noqa: E402
from app.settings import Settings  # noqa: E402
from bench.harness import bin_path, server  # noqa: E402
from support.helpers import adapter_files, lora_tensors, peft_config  # noqa: E402

SIZES = [1001, 1000, 1000]


def timed(fn: Callable[[], object], repeat: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--adapters", type=int, default=32)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "core-cpu.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    results: dict[str, object] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}",
        "threads": torch.get_num_threads(),
        **{k: v for k, v in vars(args).items() if k != "out"},
    }
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "adapters"
        data = Path(tmp) / "data"  # the run's own catalog: never the checkout's ./data
        env = {
            "UVICORN_LOG_LEVEL": "warning",
            "LORASERVE_ADAPTERS_DIR": str(store),
            "LORASERVE_DATA_DIR": str(data),
            "LORASERVE_DEVICE": "cpu",
        }
        names = [f"a{i}" for i in range(args.adapters)]
        start = time.perf_counter()
        with (
            server([bin_path("uvicorn"), "app.main:app"], env) as url,
            httpx.Client(base_url=url, timeout=60) as client,
        ):
            results["startup_s"] = time.perf_counter() - start
            for i, name in enumerate(names):
                targets = ["layer1", "layer2"]
                files = adapter_files(
                    peft_config(args.rank, 2 * args.rank, targets),
                    lora_tensors(SIZES, targets, args.rank, seed=i),
                )
                r = client.post(
                    "/v1/adapters",
                    data={"name": name},
                    files={"config": ("c.json", files[0]), "weights": ("w.safetensors", files[1])},
                )
                r.raise_for_status()
            one = {"inputs": torch.randn(1, SIZES[0]).tolist(), "adapter": names[0]}
            results["http_1row_adapter_ms"] = timed(
                lambda: client.post("/v1/predict", json=one).raise_for_status(), args.repeat * 3
            )
            x = torch.randn(args.rows, SIZES[0])
            rows = x.tolist()
            mixed = [names[i % len(names)] for i in range(args.rows)]
            results["http_batch_base_ms"] = timed(
                lambda: client.post("/v1/predict", json={"inputs": rows}).raise_for_status(),
                args.repeat,
            )
            results["http_batch_mixed_ms"] = timed(
                lambda: client.post(
                    "/v1/predict", json={"inputs": rows, "adapters": mixed, "mode": "unmerged"}
                ).raise_for_status(),
                args.repeat,
            )

        settings = Settings(adapters_dir=store, data_dir=data, device="cpu")
        services = build_services(settings, ComputeThread(), lambda rows, mode: None)
        predictor = services.predictor
        versions = services.registry.versions_for(mixed, "adapters")  # the engine takes versions
        results["model_batch_base_ms"] = timed(
            lambda: predictor.predict(x, [None] * args.rows, "unmerged"), args.repeat * 2
        )
        results["model_batch_mixed_ms"] = timed(
            lambda: predictor.predict(x, versions, "unmerged"), args.repeat * 2
        )

    med = {k: statistics.median(v) for k, v in results.items() if k.endswith("_ms")}
    summary = {
        "startup_s": round(float(results["startup_s"]), 2),  # type: ignore[arg-type]
        "http_1row_adapter_p50_ms": round(med["http_1row_adapter_ms"], 2),
        "http_1row_adapter_p99_ms": round(pct(results["http_1row_adapter_ms"], 0.99), 2),  # type: ignore[arg-type]
        "model_batch_base_ms": round(med["model_batch_base_ms"], 2),
        "model_batch_mixed_ms": round(med["model_batch_mixed_ms"], 2),
        "model_mixed_over_base": round(med["model_batch_mixed_ms"] / med["model_batch_base_ms"], 3),
        "http_batch_base_ms": round(med["http_batch_base_ms"], 2),
        "http_batch_mixed_ms": round(med["http_batch_mixed_ms"], 2),
        "http_mixed_over_base": round(med["http_batch_mixed_ms"] / med["http_batch_base_ms"], 3),
    }
    print(f"{'measure':36s} value")
    for key, value in summary.items():
        print(f"{key:36s} {value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "raw": results}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
