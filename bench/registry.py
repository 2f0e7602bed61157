"""Many adapters in the shared state: time to ready, name resolution, upload on one replica to a
first prediction on another. On SQLite + a folder (the default) and on PostgreSQL + S3.

Run: .venv/bin/python bench/registry.py [--adapters 10000 --rank 4] [--backends local,shared]
`shared` starts PostgreSQL (initdb/pg_ctl, as the tests do) and moto's S3 server on 127.0.0.1.
Adapters are registered in-process through the registry (the code path of an upload, without
HTTP), then the real server (`uvicorn app.main:app`, default settings) starts on them:
- ready_s: start to /readyz with N adapters, against an empty state in the same run;
- resolve_ms: one name resolved by a replica's registry, as a request does: from its cache (the
  default REGISTRY_TTL_MS) and from the database (TTL 0), p50/p99 over random names;
- predict_ms: one-row predictions at c=1 naming an adapter, TTL 0 (every request resolves in the
  database) against the default (cached): the difference is what resolution adds;
- upload_to_b_ms: an upload on replica A until replica B first answers a prediction with it.
Writes bench/results/registry-cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import torch
from safetensors.torch import save

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.adapters import AdapterRegistry, BaseInfo  # noqa: E402
from app.adapters import peft_format as fmt  # noqa: E402
from app.families import load_base_model  # noqa: E402
from app.lora import LoraAdapter, LoraConfig, LoraModule  # noqa: E402
from app.settings import EMBEDDED_MODEL  # noqa: E402
from app.state import Database, ObjectStore  # noqa: E402
from bench import harness  # noqa: E402
from support.services import BUCKET, new_database, postgres_server, s3_server  # noqa: E402

SIZES = [1001, 1000, 1000]


def adapter(rank: int, gen: torch.Generator) -> LoraAdapter:
    config = LoraConfig(r=rank, lora_alpha=2.0 * rank, target_modules=("layer1", "layer2"))
    modules = {
        name: LoraModule(
            torch.randn(rank, n_in, generator=gen) / n_in,
            torch.randn(n_out, rank, generator=gen) / rank,
            2.0,
        )
        for name, (n_in, n_out) in (("layer1", (1001, 1000)), ("layer2", (1000, 1000)))
    }
    return LoraAdapter(config, modules)


def base_info() -> BaseInfo:
    base = load_base_model(EMBEDDED_MODEL, torch.device("cpu"))
    linears = {n: (i.in_features, i.out_features) for n, i in base.linears().items()}
    return BaseInfo(linears, base.name, base.fingerprint, base.device, base.dtype)


@contextmanager
def backend(kind: str, tmp: Path) -> Iterator[dict[str, str]]:
    """The LORASERVE_* settings of one shared state, empty."""
    if kind == "local":
        yield {
            "LORASERVE_DATABASE_URL": f"sqlite:///{tmp / 'state.db'}",
            "LORASERVE_STORE_URL": f"file://{tmp / 'store'}",
        }
        return
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_REGION", "us-east-1")
    with postgres_server() as pg, s3_server() as endpoint:
        yield {
            "LORASERVE_DATABASE_URL": new_database(pg),
            "LORASERVE_STORE_URL": f"s3://{BUCKET}/bench",
            "LORASERVE_S3_ENDPOINT_URL": endpoint,
        }


def registry_of(env: dict[str, str], info: BaseInfo, ttl_ms: float) -> AdapterRegistry:
    db = Database(env["LORASERVE_DATABASE_URL"])
    db.migrate()
    objects = ObjectStore(env["LORASERVE_STORE_URL"], env.get("LORASERVE_S3_ENDPOINT_URL"))
    return AdapterRegistry(db, objects, info, 64, 1 << 30, ttl_ms=ttl_ms)


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50": round(statistics.median(ordered), 3),
        "p99": round(ordered[int(0.99 * (len(ordered) - 1))], 3),
    }


def run(kind: str, n: int, rank: int, info: BaseInfo, tmp: Path) -> dict:
    out: dict = {}
    with backend(kind, tmp) as env:
        common = {
            **env,
            "LORASERVE_DATA_DIR": str(tmp / "data"),
            "LORASERVE_ADAPTERS_DIR": str(tmp / "adapters"),
        }
        uvicorn = [harness.bin_path("uvicorn"), "app.main:app", "--log-level", "warning"]
        start = time.perf_counter()
        with harness.server(uvicorn, common):
            out["ready_s_empty"] = round(time.perf_counter() - start, 2)
        writer = registry_of(env, info, 0)
        gen = torch.Generator().manual_seed(0)
        start = time.perf_counter()
        names = [f"a{i:05d}" for i in range(n)]
        for name in names:
            writer.add(name, adapter(rank, gen), source="upload")
        out["register_s"] = round(time.perf_counter() - start, 1)
        start = time.perf_counter()
        with harness.server(uvicorn, common):
            out["ready_s"] = round(time.perf_counter() - start, 2)

        rng = random.Random(0)
        for label, ttl in (("cached", 1000.0), ("database", 0.0)):
            reader = registry_of(env, info, ttl)
            picks = [rng.choice(names) for _ in range(2000)]
            for name in picks[:200]:
                reader.resolve(name)  # warm: connections, and the cache for the cached case
            samples = []
            for name in picks[:200] if ttl else picks:
                t = time.perf_counter()
                reader.resolve(name)
                samples.append((time.perf_counter() - t) * 1000)
            out[f"resolve_ms_{label}"] = percentiles(samples)
            reader.db.close()

        row = {"inputs": [[round(rng.gauss(0, 1), 6) for _ in range(SIZES[0])]]}
        body = {**row, "adapter": names[0]}
        script = harness.wrk_script("/v1/predict", [json.dumps(body).encode()])
        for label, ttl in (("cached", "1000"), ("database", "0")):
            settings = {**common, "LORASERVE_REGISTRY_TTL_MS": ttl}
            with harness.server(uvicorn, settings) as url:
                harness.wrk(url, script, 1, 2)
                stats = harness.wrk(url, script, 1, 10)
            out[f"predict_c1_p50_ms_{label}"] = stats["p50_ms"]
        out["resolution_adds_p50_ms"] = round(
            out["predict_c1_p50_ms_database"] - out["predict_c1_p50_ms_cached"], 3
        )

        with ExitStack() as stack:
            a = stack.enter_context(harness.server(uvicorn, common))
            b_env = {
                **common,
                "LORASERVE_DATA_DIR": str(tmp / "data-b"),
                "LORASERVE_ADAPTERS_DIR": str(tmp / "adapters-b"),
            }
            b = stack.enter_context(harness.server(uvicorn, b_env))
            config = fmt.config_json(adapter(rank, gen).config, info.name)
            # Kept-alive clients: a new httpx client per request costs more than the service.
            client_a = stack.enter_context(httpx.Client(base_url=a, timeout=30))
            client_b = stack.enter_context(httpx.Client(base_url=b, timeout=30))
            latencies = []
            for i in range(23):
                new = adapter(rank, gen)
                tensors = {
                    fmt.tensor_key(m, w): getattr(mod, w)
                    for m, mod in new.modules.items()
                    for w in ("lora_A", "lora_B")
                }
                weights = save(tensors)
                start = time.perf_counter()
                client_a.post(
                    "/v1/adapters",
                    data={"name": f"fresh{i}"},
                    files={"config": ("c", config), "weights": ("w", weights)},
                ).raise_for_status()
                answer = client_b.post("/v1/predict", json={**row, "adapter": f"fresh{i}"})
                answer.raise_for_status()
                if i >= 3:
                    latencies.append((time.perf_counter() - start) * 1000)
            out["upload_to_b_ms"] = percentiles(latencies)
        writer.db.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--adapters", type=int, default=10_000)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--backends", default="local,shared")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "registry-cpu.json"
    )
    args = parser.parse_args()
    info = base_info()
    results = {}
    for kind in args.backends.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            results[kind] = run(kind, args.adapters, args.rank, info, Path(tmp))
        print(kind, json.dumps(results[kind], indent=2), flush=True)
    machine = f"{platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}"
    meta = {
        "machine": machine,
        "adapters": args.adapters,
        "rank": args.rank,
        "server": "uvicorn app.main:app, default settings",
        "client": "wrk, c=1",
    }
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
