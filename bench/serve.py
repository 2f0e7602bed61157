"""The service as users run it, under wrk: the serving targets of issue 10.

Run: .venv/bin/python bench/serve.py [--duration 10] [--rounds 2]     (apt-get install wrk)

Every server is started the way the README starts it, `uvicorn app.main:app` with default
settings: nothing pinned, no thread settings. Load comes from wrk (a C client: one thread of it
keeps 64 connections busy for a fraction of a core), on the same two cores as the server, as a
user's load would. All servers are up at once and every round runs every case in turn, so that
the machine's drift hits all of them alike; the figures are medians over rounds.

Cases (single-row JSON requests unless said; 64 adapters of rank 16 on both layers):
  healthz c1, c64     GET /healthz, the HTTP floor of the same server
  base c1, c64        predict on the base alone
  mixed c64           each request on one of the 64 adapters, uniformly
  mixed zipf c64      the same with Zipf popularity (a few hot adapters)
  no batching c64     the mixed load on a server with LORASERVE_BATCHING=false
  PEFT c64            the mixed load on the per-request PEFT server (bench/peft_server.py)
  wide on/off c64     mlp [4096] x 5 (random weights made here), batching on and off
  big base / 64 / 8   one 256-row safetensors request at a time (c1): base only, rows over all
                      64 adapters, then rows over 8 of them (right after the 64-adapter case);
                      end to end (wrk) and model time (Server-Timing)
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import orjson
import torch
from safetensors.torch import save, save_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.adapters.peft_format import WEIGHTS_FILE, config_json, tensor_key  # noqa: E402
from app.lora import LoraConfig  # noqa: E402
from app.settings import EMBEDDED_MODEL  # noqa: E402
from bench import harness  # noqa: E402

N_ADAPTERS, RANK = 64, 16
OCTET = "application/octet-stream"


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


def bodies(width: int, names: list[str] | None, zipf: bool, count: int = 128) -> list[bytes]:
    """Pre-encoded single-row JSON bodies."""
    rng = random.Random(0)
    weights = [1 / (k + 1) ** 1.1 for k in range(len(names))] if names and zipf else None
    out = []
    for _ in range(count):
        body: dict[str, object] = {"inputs": [[round(rng.gauss(0, 1), 6) for _ in range(width)]]}
        if names:
            body["adapter"] = rng.choices(names, weights=weights)[0]
        out.append(orjson.dumps(body))
    return out


def big_body(folder: Path, label: str, per_row: list[str] | None) -> Path:
    """A 256-row safetensors request body, written to a file wrk reads."""
    x = torch.randn(256, 1001, generator=torch.Generator().manual_seed(2))
    metadata = {"adapters": json.dumps(per_row)} if per_row else None
    path = folder / f"{label}.safetensors"
    path.write_bytes(save({"inputs": x}, metadata=metadata))
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load case")
    parser.add_argument("--big-duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve-cpu.json")
    args = parser.parse_args()
    uvicorn = [harness.bin_path("uvicorn"), "--log-level", "warning"]

    with tempfile.TemporaryDirectory() as tmp, ExitStack() as servers:
        tmp_path = Path(tmp)
        seed_adapters = tmp_path / "seed-adapters"
        names = write_adapters(seed_adapters, [1001, 1000, 1000], N_ADAPTERS, RANK)
        sizes = [4096] * 5
        wide = write_wide_base(tmp_path / "wide", sizes)
        wide_adapters = tmp_path / "wide-adapters"
        wide_names = write_adapters(wide_adapters, sizes, N_ADAPTERS, RANK)

        folders = itertools.count()

        def start(app: str, env: dict[str, str]) -> str:
            n = next(folders)
            data = {"LORASERVE_DATA_DIR": str(tmp_path / f"data-{n}")}
            if "LORASERVE_ADAPTERS_DIR" in env:  # each server imports (and moves) its own copy
                own = tmp_path / f"adapters-{n}"
                shutil.copytree(env["LORASERVE_ADAPTERS_DIR"], own)
                env = {**env, "LORASERVE_ADAPTERS_DIR": str(own)}
            return servers.enter_context(harness.server([*uvicorn, app], {**data, **env}))

        seed_env = {"LORASERVE_ADAPTERS_DIR": str(seed_adapters)}
        wide_env = {"LORASERVE_BASE_MODEL": str(wide), "LORASERVE_ADAPTERS_DIR": str(wide_adapters)}
        seed = start("app.main:app", seed_env)
        seed_off = start("app.main:app", {**seed_env, "LORASERVE_BATCHING": "false"})
        peft = start(
            "bench.peft_server:app",
            {"PEFT_BASE": str(EMBEDDED_MODEL), "PEFT_ADAPTERS": str(seed_adapters)},
        )
        wide_on = start("app.main:app", wide_env)
        wide_off = start("app.main:app", {**wide_env, "LORASERVE_BATCHING": "false"})

        predict = "/v1/predict"
        base_script = harness.wrk_script(predict, bodies(1001, None, False))
        mixed_script = harness.wrk_script(predict, bodies(1001, names, False))
        zipf_script = harness.wrk_script(predict, bodies(1001, names, True))
        wide_script = harness.wrk_script(predict, bodies(4096, wide_names, False, count=64))
        big = {
            label: harness.wrk_file_script(predict, big_body(tmp_path, label, rows), OCTET)
            for label, rows in {
                "big base": None,
                "big 64 adapters": [names[i % 64] for i in range(256)],
                "big 8 adapters": [names[i % 8] for i in range(256)],
            }.items()
        }
        d, bd = args.duration, args.big_duration
        cases: dict[str, Callable[[], dict]] = {
            "healthz c1": lambda: harness.wrk(f"{seed}/healthz", harness.wrk_get_script(), 1, d),
            "healthz c64": lambda: harness.wrk(f"{seed}/healthz", harness.wrk_get_script(), 64, d),
            "base c1": lambda: harness.wrk(seed, base_script, 1, d),
            "base c64": lambda: harness.wrk(seed, base_script, 64, d),
            "mixed c64": lambda: harness.wrk(seed, mixed_script, 64, d),
            "mixed zipf c64": lambda: harness.wrk(seed, zipf_script, 64, d),
            "no batching c64": lambda: harness.wrk(seed_off, mixed_script, 64, d),
            "PEFT c64": lambda: harness.wrk(peft, mixed_script, 64, d),
            "wide on c64": lambda: harness.wrk(wide_on, wide_script, 64, d),
            "wide off c64": lambda: harness.wrk(wide_off, wide_script, 64, d),
            **{label: (lambda s=s: harness.wrk(seed, s, 1, bd)) for label, s in big.items()},
        }
        for url, script in ((seed, mixed_script), (seed_off, mixed_script), (peft, mixed_script),
                            (wide_on, wide_script), (wide_off, wide_script)):  # fmt: skip
            harness.wrk(url, script, 8, 2)  # warm-up: adapters loaded, stacks built
        runs: dict[str, list[dict]] = {name: [] for name in cases}
        for r in range(args.rounds):
            for name, case in cases.items():
                stats = case()
                runs[name].append(stats)
                extra = f" model {stats['model_p50_ms']:.2f} ms" if "model_p50_ms" in stats else ""
                print(
                    f"round {r + 1} {name:16s} {stats['requests_per_s']:8.1f} req/s  "
                    f"p50 {stats['p50_ms']:7.2f} ms  p99 {stats['p99_ms']:7.2f} ms  "
                    f"failed {stats['failed']}{extra}",
                    flush=True,
                )

    def median(name: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[name])

    summary = {
        name: {
            key: median(name, key)
            for key in ("requests_per_s", "p50_ms", "p99_ms", "model_p50_ms")
            if key in runs[name][0]
        }
        | {"failed": sum(run["failed"] for run in runs[name])}
        for name in runs
    }

    def ratio(a: str, b: str, key: str = "requests_per_s") -> float:
        return round(summary[a][key] / summary[b][key], 3)

    targets = {
        "big 64 adapters / big base, end to end (<= 1.15)": ratio("big 64 adapters", "big base", "p50_ms"),
        "big 64 adapters / big base, model (<= 1.15)": ratio("big 64 adapters", "big base", "model_p50_ms"),
        "big 8 adapters / big base, end to end (<= 1.15)": ratio("big 8 adapters", "big base", "p50_ms"),
        "big 8 adapters / big base, model (<= 1.15)": ratio("big 8 adapters", "big base", "model_p50_ms"),
        "mixed c64 / PEFT c64 (>= 4)": ratio("mixed c64", "PEFT c64"),
        "mixed c64 / base c64 (>= 0.9)": ratio("mixed c64", "base c64"),
        "wide on / wide off (>= 5)": ratio("wide on c64", "wide off c64"),
        "base c1 p50 / healthz c1 p50 (<= 2)": ratio("base c1", "healthz c1", "p50_ms"),
        "base c64 / healthz c64 (>= 0.6)": ratio("base c64", "healthz c64"),
        "mixed c64 / no batching c64": ratio("mixed c64", "no batching c64"),
    }  # fmt: skip
    print("\nmedians over rounds")
    for name, s in summary.items():
        model = f"  model {s['model_p50_ms']:.2f} ms" if "model_p50_ms" in s else ""
        print(f"  {name:16s} {s['requests_per_s']:8.1f} req/s  p50 {s['p50_ms']:7.2f} ms{model}")
    print("\ntargets")
    for name, value in targets.items():
        print(f"  {name:52s} {value}")
    results = {
        "meta": {
            "machine": f"{platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}",
            "adapters": N_ADAPTERS, "rank": RANK, "duration_s": args.duration,
            "big_duration_s": args.big_duration, "rounds": args.rounds,
            "server": "uvicorn app.main:app, default settings, nothing pinned",
            "client": "wrk, 1 thread, on the same machine",
        },
        "cases": summary,
        "rounds": runs,
        "targets": targets,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
