"""Rows on compositions against the same rows on single adapters (issue 29's mlp target: 256 rows,
each a composition of 2 of 64 rank-16 adapters, model time at most 1.2x the same rows with one
adapter each: each row's first source), on the embedded seed model.

Two measurements, each alternating both loads in every round (a shared, noisy machine: the
ratio is of medians):
- `engine`: Predictor.predict as the engine calls it (resolving the rows' adapters and the
  forward), with new random compositions every round;
- `service`: the real server as users start it (`loraserve serve`, default settings, on
  127.0.0.1), 64 adapters uploaded by POST, one /v1/predict at a time with new random
  compositions every round; the server's own model time (its Server-Timing header) and the
  request's whole time as the client sees it.

    .venv/bin/python bench/compose.py --rounds 15 --out bench/results/compose-mlp.json
"""

from __future__ import annotations

import argparse
import json
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

from app.adapters import AdapterRegistry, base_info  # noqa: E402
from app.client import Client  # noqa: E402
from app.engine import Predictor  # noqa: E402
from app.engine.compositions import composition_key  # noqa: E402
from app.families import load_base_model  # noqa: E402
from app.settings import EMBEDDED_MODEL  # noqa: E402
from bench.harness import bin_path, server  # noqa: E402
from support.helpers import adapter_files, lora_tensors, peft_config  # noqa: E402

SIZES = [1001, 1000, 1000]
TARGETS = ["layer1", "layer2"]
Pairs = list[tuple[int, int]]


def write_adapters(folder: Path, n: int, rank: int) -> list[Path]:
    folders = []
    for i in range(n):
        config, weights = adapter_files(
            peft_config(rank, 2.0 * rank, TARGETS), lora_tensors(SIZES, TARGETS, rank, seed=i)
        )
        out = folder / f"a{i}"
        out.mkdir(parents=True)
        (out / "adapter_config.json").write_bytes(config)
        (out / "adapter_model.safetensors").write_bytes(weights)
        folders.append(out)
    return folders


def rounds(n: int, measure: Callable[[str, Pairs], dict[str, float]], args) -> dict:
    """`measure(kind, pairs)` each round for both kinds on the same new random pairs."""
    rng = random.Random(0)
    samples: dict[str, dict[str, list[float]]] = {"single": {}, "composed": {}}
    for _ in range(n):
        pairs = [tuple(rng.sample(range(args.adapters), 2)) for _ in range(args.rows)]
        for kind in samples:
            for field, value in measure(kind, pairs).items():  # type: ignore[arg-type]
                samples[kind].setdefault(field, []).append(value)
    medians = {k: {f: statistics.median(v) for f, v in s.items()} for k, s in samples.items()}
    ratios = {f: medians["composed"][f] / medians["single"][f] for f in medians["single"]}
    return {"median_ms": medians, "ratio": ratios}


def engine(folders: list[Path], args) -> dict:
    base = load_base_model(EMBEDDED_MODEL, torch.device("cpu"))
    registry = AdapterRegistry.local(Path(tempfile.mkdtemp()), base_info(base), 64, 1 << 34)
    versions = []
    for folder in folders:
        files = [
            (folder / f).read_bytes() for f in ("adapter_config.json", "adapter_model.safetensors")
        ]
        versions.append(registry.upload(folder.name, *files).version)
    predictor = Predictor(base, registry, 0)
    x = torch.randn(args.rows, SIZES[0])

    def measure(kind: str, pairs: Pairs) -> dict[str, float]:
        if kind == "single":
            rows = [versions[a] for a, _ in pairs]
        else:
            rows = [composition_key([(versions[a], 0.5), (versions[b], 0.5)]) for a, b in pairs]
        start = time.perf_counter()
        predictor.predict(x, rows, "unmerged")
        return {"model": (time.perf_counter() - start) * 1000}

    measure("composed", [(0, 1)] * args.rows)  # the first call stacks the adapters
    return rounds(args.rounds, measure, args)


def service(folders: list[Path], args) -> dict:
    env = {"LORASERVE_DATA_DIR": tempfile.mkdtemp()}
    x = torch.randn(args.rows, SIZES[0]).tolist()
    with server([bin_path("loraserve"), "serve"], env) as url:
        with Client(url) as client:
            for folder in folders:
                client.upload_adapter(folder.name, folder)
        with httpx.Client(base_url=url, timeout=120) as http:

            def measure(kind: str, pairs: Pairs) -> dict[str, float]:
                if kind == "single":
                    rows: list = [f"a{a}" for a, _ in pairs]
                else:
                    rows = [[{"name": f"a{a}", "scale": 0.5}, {"name": f"a{b}", "scale": 0.5}]
                            for a, b in pairs]  # fmt: skip
                body = json.dumps({"inputs": x, "adapters": rows, "mode": "unmerged"})
                start = time.perf_counter()
                r = http.post(
                    "/v1/predict", content=body, headers={"content-type": "application/json"}
                )
                total = (time.perf_counter() - start) * 1000
                r.raise_for_status()
                timing = dict(
                    (p.split(";dur=")[0].strip(), float(p.split(";dur=")[1]))
                    for p in r.headers["server-timing"].split(",")
                )
                return {"model": timing["model"], "request": total}

            measure("composed", [(0, 1)] * args.rows)  # warm: the first call stacks
            return rounds(args.rounds, measure, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--adapters", type=int, default=64)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--skip-service", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    folders = write_adapters(Path(tempfile.mkdtemp()), args.adapters, args.rank)
    result = {
        "rows": args.rows, "adapters": args.adapters, "rank": args.rank, "rounds": args.rounds,
        "compositions": "each row 0.5 * a + 0.5 * b, a != b drawn anew every round",
        "single": "each row on its composition's first source",
        "target_ratio": 1.2,
        "engine": engine(folders, args),
    }  # fmt: skip
    if not args.skip_service:
        result["service"] = service(folders, args)
    print(json.dumps(result, indent=2))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
