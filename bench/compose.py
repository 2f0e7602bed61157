"""Model time of rows on compositions against the same rows on single adapters (issue 29's mlp
target: 256 rows, each a composition of 2 of 64 rank-16 adapters, at most 1.2x the same rows with
one adapter each), on the embedded seed model, through the Predictor as the engine calls it.

    .venv/bin/python bench/compose.py --rounds 5

Both loads alternate in every round; the ratio is of medians (a shared, noisy machine).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.adapters import AdapterRegistry, base_info  # noqa: E402
from app.engine import Predictor  # noqa: E402
from app.engine.compositions import composition_key  # noqa: E402
from app.families import load_base_model  # noqa: E402
from app.settings import EMBEDDED_MODEL  # noqa: E402
from support.helpers import adapter_files, lora_tensors, peft_config  # noqa: E402

SIZES = [1001, 1000, 1000]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--adapters", type=int, default=64)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    base = load_base_model(EMBEDDED_MODEL, torch.device("cpu"))
    registry = AdapterRegistry.local(Path(tempfile.mkdtemp()), base_info(base), 64, 1 << 34)
    targets = ["layer1", "layer2"]
    versions = []
    for i in range(args.adapters):
        files = adapter_files(
            peft_config(args.rank, 2.0 * args.rank, targets),
            lora_tensors(SIZES, targets, args.rank, seed=i),
        )
        versions.append(registry.upload(f"a{i}", *files).version)
    predictor = Predictor(base, registry, 0)
    rng = random.Random(0)
    single = [versions[i % args.adapters] for i in range(args.rows)]
    pairs = [rng.sample(versions, 2) for _ in range(args.rows)]
    composed = [composition_key([(a, 0.5), (b, 0.5)]) for a, b in pairs]
    x = torch.randn(args.rows, SIZES[0])
    loads = {"single": single, "composed": composed}
    loaded = {k: predictor.resolve(v, "adapters") for k, v in loads.items()}  # composed once
    times: dict[str, list[float]] = {k: [] for k in loads}
    for _ in range(args.rounds):
        for kind, rows in loads.items():
            start = time.perf_counter()
            predictor.forward(x, rows, loaded[kind], "unmerged")
            times[kind].append((time.perf_counter() - start) * 1000)
    medians = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "rows": args.rows, "adapters": args.adapters, "rank": args.rank,
        "distinct_compositions": len(set(composed)),
        "model_ms": medians, "ratio": medians["composed"] / medians["single"], "target": 1.2,
    }  # fmt: skip
    print(json.dumps(result, indent=2))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
