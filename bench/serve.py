"""End-to-end serving: the real server under an httpx async load generator.

Run: .venv/bin/python bench/serve.py [--duration 4] [--skip-wide] [--skip-peft]
Scenarios, each at several concurrencies of single-row requests (closed loop, one process):
  seed model:  base-only traffic, mixed traffic over 64 rank-16 adapters (uniform and Zipf
               popularity), the same mixed traffic with BATCHING=false, and the per-request PEFT
               server (bench/peft_server.py) on the same adapters;
  wide base:   mlp [4096] * 5, random weights made here, batching on and off.
Also a 256-row request over 64 adapters, JSON and safetensors, against the model time alone.
With two or more cores, the server runs on core 0 with one torch thread and the load generator
on core 1, so that they do not starve each other; figures are relative to each other.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import orjson
import torch
from safetensors.torch import load, save, save_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.adapters.peft_format import WEIGHTS_FILE, config_json, tensor_key  # noqa: E402
from app.lora import LoraConfig  # noqa: E402
from app.settings import EMBEDDED_MODEL  # noqa: E402
from bench import harness  # noqa: E402

N_ADAPTERS, RANK = 64, 16


def write_adapters(root: Path, sizes: list[int], n: int, rank: int) -> list[str]:
    """n PEFT-layout adapters on every layer, written straight to disk."""
    gen = torch.Generator().manual_seed(0)
    names = []
    targets = tuple(f"layer{i + 1}" for i in range(len(sizes) - 1))
    for i in range(n):
        name = f"a{i:03d}"
        folder = root / name
        folder.mkdir(parents=True)
        tensors = {}
        for layer, n_in, n_out in zip(targets, sizes, sizes[1:], strict=False):
            tensors[tensor_key(layer, "lora_A")] = torch.randn(rank, n_in, generator=gen) / n_in
            tensors[tensor_key(layer, "lora_B")] = torch.randn(n_out, rank, generator=gen) / rank
        save_file(tensors, folder / WEIGHTS_FILE, metadata={"format": "pt"})
        config = LoraConfig(r=rank, lora_alpha=2.0 * rank, target_modules=targets)
        (folder / "adapter_config.json").write_bytes(config_json(config, "bench"))
        names.append(name)
    return names


def write_wide_base(folder: Path, sizes: list[int]) -> Path:
    gen = torch.Generator().manual_seed(1)
    folder.mkdir(parents=True)
    config = {"architecture": "mlp", "sizes": sizes, "bias": False, "activation": "relu"}
    (folder / "config.json").write_text(json.dumps(config))
    state = {
        f"layer{i + 1}.weight": torch.randn(b, a, generator=gen) / a**0.5
        for i, (a, b) in enumerate(itertools.pairwise(sizes))
    }
    save_file(state, folder / "model.safetensors")
    return folder


PIN = os.cpu_count() is not None and os.cpu_count() >= 2  # type: ignore[operator]


def server(app: str, env: dict[str, str]) -> AbstractContextManager[str]:
    return harness.server([harness.bin_path("uvicorn"), app, "--log-level", "warning"], env)


def bodies(width: int, names: list[str] | None, zipf: bool, count: int = 512) -> list[bytes]:
    """Pre-encoded single-row JSON bodies, so the client spends little CPU per request."""
    rng = random.Random(0)
    weights = [1 / (k + 1) ** 1.1 for k in range(len(names))] if names and zipf else None
    out = []
    for _ in range(count):
        body: dict[str, object] = {"inputs": [[rng.gauss(0, 1) for _ in range(width)]]}
        if names:
            body["adapter"] = rng.choices(names, weights=weights)[0]
        out.append(orjson.dumps(body))
    return out


async def _drive(url: str, payloads: list[bytes], concurrency: int, duration: float) -> dict:
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + duration
    headers = {"content-type": "application/json"}

    async def worker(k: int) -> None:
        # One client (one connection) per worker: httpx's shared pool slows down sharply at
        # dozens of concurrent connections, which would measure the client, not the server.
        nonlocal errors
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
            i = k
            while time.perf_counter() < stop_at:
                start = time.perf_counter()
                body = payloads[i % len(payloads)]
                response = await client.post("/v1/predict", content=body, headers=headers)
                if response.status_code != 200:
                    errors += 1
                latencies.append((time.perf_counter() - start) * 1000)
                i += concurrency

    begin = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    elapsed = time.perf_counter() - begin
    ordered = sorted(latencies)
    return {
        "requests_per_s": len(latencies) / elapsed,
        "rows_per_s": len(latencies) / elapsed,
        "p50_ms": statistics.median(ordered),
        "p99_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "errors": errors,
        "requests": len(latencies),
    }


def drive(url: str, payloads: list[bytes], concurrency: int, duration: float) -> dict:
    asyncio.run(_drive(url, payloads[:32], 4, 0.5))  # warm-up
    return asyncio.run(_drive(url, payloads, concurrency, duration))


def big_request(url: str, names: list[str], rows: int = 256, repeat: int = 20) -> dict:
    """One 256-row request over 64 adapters (and base-only), JSON and safetensors."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(rows, 1001, generator=gen)
    per_row = [names[i % len(names)] for i in range(rows)]
    cases = {
        "json_base": ("application/json", orjson.dumps({"inputs": x.numpy()}, option=orjson.OPT_SERIALIZE_NUMPY)),
        "json_mixed": ("application/json", orjson.dumps({"inputs": x.numpy(), "adapters": per_row, "mode": "unmerged"}, option=orjson.OPT_SERIALIZE_NUMPY)),
        "safetensors_base": ("application/octet-stream", save({"inputs": x})),
        "safetensors_mixed": ("application/octet-stream", save({"inputs": x}, metadata={"adapters": json.dumps(per_row)})),
    }  # fmt: skip
    out = {}
    with httpx.Client(base_url=url, timeout=60) as client:
        for label, (ctype, body) in cases.items():
            headers = {"content-type": ctype, "accept": ctype}
            totals, models = [], []
            for i in range(repeat + 3):
                start = time.perf_counter()
                response = client.post("/v1/predict", content=body, headers=headers)
                total = (time.perf_counter() - start) * 1000
                response.raise_for_status()
                if ctype == "application/octet-stream":
                    assert load(response.content)["outputs"].shape == (rows, 1000)
                timing = dict(
                    p.strip().split(";dur=") for p in response.headers["server-timing"].split(",")
                )
                if i >= 3:
                    totals.append(total)
                    models.append(float(timing["model"]))
            out[label] = {
                "end_to_end_ms": statistics.median(totals),
                "model_ms": statistics.median(models),
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--skip-wide", action="store_true")
    parser.add_argument("--skip-peft", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve-cpu.json")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    if PIN:
        os.sched_setaffinity(0, {1})
    results: dict[str, object] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}",
        "adapters": N_ADAPTERS, "rank": RANK, "duration_s": args.duration,
    }  # fmt: skip
    rows: list[dict] = []

    def record(model: str, scenario: str, concurrency: int, stats: dict) -> None:
        rows.append({"model": model, "scenario": scenario, "concurrency": concurrency, **stats})
        print(
            f"{model:5s} {scenario:22s} c={concurrency:<3d} {stats['requests_per_s']:8.1f} req/s "
            f"p50 {stats['p50_ms']:7.2f} ms  p99 {stats['p99_ms']:7.2f} ms  errors {stats['errors']}",
            flush=True,
        )

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        seed_adapters = tmp_path / "seed-adapters"
        names = write_adapters(seed_adapters, [1001, 1000, 1000], N_ADAPTERS, RANK)
        common = {"LORASERVE_DEVICE": "cpu", "LORASERVE_DATA_DIR": str(tmp_path / "data")}
        seed_env = {**common, "LORASERVE_ADAPTERS_DIR": str(seed_adapters)}
        traffic = {
            "base-only": bodies(1001, None, False),
            "mixed uniform": bodies(1001, names, False),
            "mixed zipf": bodies(1001, names, True),
        }
        with server("app.main:app", seed_env) as url:
            results["big_request"] = big_request(url, names)
            for scenario, payloads in traffic.items():
                for c in levels if scenario != "mixed zipf" else levels[-1:]:
                    record("seed", scenario, c, drive(url, payloads, c, args.duration))
        with server("app.main:app", {**seed_env, "LORASERVE_BATCHING": "false"}) as url:
            for c in levels:
                record(
                    "seed",
                    "mixed uniform, no batch",
                    c,
                    drive(url, traffic["mixed uniform"], c, args.duration),
                )
        if not args.skip_peft:
            peft_env = {"PEFT_BASE": str(EMBEDDED_MODEL), "PEFT_ADAPTERS": str(seed_adapters)}
            with server("bench.peft_server:app", peft_env) as url:
                for c in levels:
                    record(
                        "seed",
                        "mixed uniform, PEFT",
                        c,
                        drive(url, traffic["mixed uniform"], c, args.duration),
                    )
        if not args.skip_wide:
            sizes = [4096] * 5
            wide = write_wide_base(tmp_path / "wide", sizes)
            wide_adapters = tmp_path / "wide-adapters"
            wide_names = write_adapters(wide_adapters, sizes, N_ADAPTERS, RANK)
            wide_env = {
                **common,
                "LORASERVE_BASE_MODEL": str(wide),
                "LORASERVE_ADAPTERS_DIR": str(wide_adapters),
            }
            wide_traffic = bodies(4096, wide_names, False, count=128)
            for batching in ("true", "false"):
                with server("app.main:app", {**wide_env, "LORASERVE_BATCHING": batching}) as url:
                    label = "mixed uniform" + ("" if batching == "true" else ", no batch")
                    for c in (levels[0], levels[-1]):
                        record("wide", label, c, drive(url, wide_traffic, c, args.duration))
    results["rows"] = rows

    def rate(model: str, scenario: str, c: int) -> float | None:
        found = [
            r["requests_per_s"]
            for r in rows
            if (r["model"], r["scenario"], r["concurrency"]) == (model, scenario, c)
        ]
        return found[0] if found else None

    top = levels[-1]
    ratios = {}
    for key, (num, den) in {
        "seed_mixed_over_base": (("seed", "mixed uniform"), ("seed", "base-only")),
        "seed_mixed_over_peft": (("seed", "mixed uniform"), ("seed", "mixed uniform, PEFT")),
        "seed_batching_over_off": (("seed", "mixed uniform"), ("seed", "mixed uniform, no batch")),
        "wide_batching_over_off": (("wide", "mixed uniform"), ("wide", "mixed uniform, no batch")),
    }.items():
        a, b = rate(*num, top), rate(*den, top)
        ratios[key] = round(a / b, 3) if a and b else None
    results["ratios_at_top_concurrency"] = ratios
    big = results["big_request"]
    assert isinstance(big, dict)
    print("\n256-row request over 64 adapters (median ms): end to end / model")
    for label, v in big.items():
        print(f"  {label:18s} {v['end_to_end_ms']:8.2f} / {v['model_ms']:7.2f}")
    st_ratio = big["safetensors_mixed"]["end_to_end_ms"] / big["safetensors_base"]["end_to_end_ms"]
    results["safetensors_mixed_over_base"] = round(st_ratio, 3)
    print(f"  safetensors end to end, mixed / base: {st_ratio:.3f}")
    print(f"\nratios at concurrency {top}: {json.dumps(ratios)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
