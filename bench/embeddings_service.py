"""all-MiniLM-L6-v2 served over HTTP under wrk: the service against sentence-transformers and PEFT.

Run: .venv/bin/python bench/embeddings_service.py [--duration 20] [--out bench/results/embeddings-service-cpu.json]
Needs wrk (apt-get install wrk). Requests are lists of 32 texts of about 32 tokens, 16 connections.
  anchor       sentence-transformers' `encode` in this process, no HTTP (texts/s)
  base         the service as users run it (`loraserve serve --base-model all-MiniLM-L6-v2`,
               default settings), no adapter
  mixed        the same server, each request on one of 16 adapters (rank 8, query and value)
  mixed_rows   the same, each text of a request on its own adapter (`adapters`)
  peft         bench/peft_embed_server.py: PEFT, `set_adapter` per request, one at a time
Every ratio is against a figure of the same run: both servers stay up (idle when not driven),
and every case runs in turn, round after round; the figures are the medians.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
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

from app.client import Client  # noqa: E402
from app.families import load_base_model  # noqa: E402
from app.families.encoder.model import known_model_folder  # noqa: E402
from bench.embeddings import texts, write_adapters  # noqa: E402
from bench.harness import bin_path, server, wrk, wrk_script  # noqa: E402

BASE = "all-MiniLM-L6-v2"
PER_REQUEST, N_ADAPTERS, N_BODIES = 32, 16, 64


def st_anchor(pool: list[str]) -> Callable[[float], float]:
    """sentence-transformers' encode (batch_size 32, its default) for some seconds: texts/s."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(known_model_folder(BASE)), device="cpu")
    model.encode(pool[:64])

    def run(seconds: float) -> float:
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            model.encode(pool)
            done += len(pool)
        return done / (time.perf_counter() - start)

    return run


def bodies(pool: list[str], kind: str, names: list[str], base_name: str) -> list[bytes]:
    rng = random.Random(1)
    out = []
    for i in range(N_BODIES):
        body: dict[str, object] = {"input": rng.sample(pool, PER_REQUEST), "model": base_name}
        if kind == "mixed":
            body["model"] = names[i % len(names)]
        elif kind == "mixed_rows":
            body["adapters"] = [names[(i + k) % len(names)] for k in range(PER_REQUEST)]
        out.append(json.dumps(body).encode())
    return out


def drain(url: str) -> None:
    """Wait until the server has finished the requests wrk left in flight when it stopped (both
    servers take requests in arrival order, so one more answers only after them): otherwise
    that work would be charged to whatever runs next."""
    body = {"input": ["drain"], "model": BASE}
    httpx.post(f"{url}/v1/embeddings", json=body, timeout=300).raise_for_status()


def texts_per_s(url: str, script: str, args: argparse.Namespace) -> float:
    result = wrk(url, script, args.connections, args.duration)
    drain(url)
    assert result["failed"] == 0, f"{result['failed']} requests failed"
    return float(result["requests_per_s"] * PER_REQUEST)


def check_same(ours: str, peft: str, payload: bytes) -> float:
    """Largest difference between the two servers' embeddings for one request."""
    a, b = (httpx.post(f"{u}/v1/embeddings", content=payload, timeout=60,
                       headers={"content-type": "application/json"}).json()
            for u in (ours, peft))  # fmt: skip
    return max(abs(x - y) for da, db in zip(a["data"], b["data"], strict=True)
               for x, y in zip(da["embedding"], db["embedding"], strict=True))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=10, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    pool = texts(2048, seed=0)
    tmp = Path(tempfile.mkdtemp())
    base = load_base_model(Path(BASE), torch.device("cpu"))
    linears = {n: (i.in_features, i.out_features) for n, i in base.linears().items()}
    del base
    folders = write_adapters(tmp / "peft", linears, N_ADAPTERS)
    names = [f.name for f in folders]
    env = {"LORASERVE_DATA_DIR": str(tmp / "data"), "LORASERVE_ADAPTERS_DIR": str(tmp / "store")}
    cmd = [bin_path("loraserve"), "serve", "--base-model", BASE]
    peft_env = {"PEFT_BASE": BASE, "PEFT_ADAPTERS": str(tmp / "peft")}
    peft_cmd = [bin_path("uvicorn"), "bench.peft_embed_server:app", "--log-level", "warning"]
    anchor = st_anchor(pool[:512])
    samples: dict[str, list[float]] = {}
    with server(cmd, env) as ours, server(peft_cmd, peft_env) as peft:
        with Client(ours) as client:
            for folder in folders:
                client.upload_adapter(folder.name, folder)
        mixed = bodies(pool, "mixed", names, BASE)
        same = check_same(ours, peft, mixed[3])
        runs = {
            "base": (ours, wrk_script("/v1/embeddings", bodies(pool, "base", names, BASE))),
            "mixed": (ours, wrk_script("/v1/embeddings", mixed)),
            "mixed_rows": (ours, wrk_script("/v1/embeddings", bodies(pool, "mixed_rows", names, BASE))),
            "peft": (peft, wrk_script("/v1/embeddings", mixed)),
        }  # fmt: skip
        for url, script in runs.values():
            wrk(url, script, args.connections, 3)  # warm-up: first batches, allocator, caches
            drain(url)
        # Round after round, every case in turn: on a shared machine all meet the same noise.
        for round_ in range(args.rounds):
            samples.setdefault("anchor", []).append(anchor(args.duration))
            for kind, (url, script) in runs.items():
                samples.setdefault(kind, []).append(texts_per_s(url, script, args))
            print(f"round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in samples.items()),
                  flush=True)  # fmt: skip
    results = {k: {"texts_per_s": statistics.median(v), "rounds": v} for k, v in samples.items()}
    results["same_output_max_abs"] = {"value": same}
    for kind, r in results.items():
        if "texts_per_s" in r:
            print(f"{kind:10s} {r['texts_per_s']:8.1f} texts/s (median of {args.rounds} runs)")

    t = {k: v["texts_per_s"] for k, v in results.items() if "texts_per_s" in v}
    ratios = {
        "base_over_anchor": t["base"] / t["anchor"],
        "mixed_over_base": t["mixed"] / t["base"],
        "mixed_rows_over_base": t["mixed_rows"] / t["base"],
        "mixed_over_peft": t["mixed"] / t["peft"],
    }
    for k, v in ratios.items():
        print(f"{k:22s} {v:6.2f}x")
    print(
        f"ours vs PEFT, same request: max abs difference {results['same_output_max_abs']['value']:.2e}"
    )
    if args.out:
        meta = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                "machine": platform.machine(), "connections": args.connections,
                "texts_per_request": PER_REQUEST, "duration_s": args.duration,
                "rounds": args.rounds}  # fmt: skip
        args.out.write_text(json.dumps({"meta": meta, "results": results, "ratios": ratios},
                                       indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
