"""How long torch's idle OpenMP workers spin, under HTTP load (the GOMP_SPINCOUNT the service sets).

Run: .venv/bin/python bench/spin.py [--duration 5] [--rounds 3]     (apt-get install wrk)
The seed model with 64 rank-16 adapters, one `uvicorn app.main:app` per setting, all up at
once, cases run in turn round after round under wrk: one-row predicts on the base at c=1 (p50
ms) and c=64 (req/s), one-row predicts over the 64 adapters at c=64 (req/s), and one 256-row
safetensors request over the 64 adapters at a time (model ms from Server-Timing). Settings:
libgomp's own default (300000), a short spin (10000), and the service's (0).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402
from bench.serve import OCTET, big_body, bodies, write_adapters  # noqa: E402

SETTINGS = {"libgomp default": "300000", "short spin": "10000", "service (no spin)": "0"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "spin-cpu.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as servers:
        tmp_path = Path(tmp)
        names = write_adapters(tmp_path / "adapters", [1001, 1000, 1000], 64, 16)
        base = harness.wrk_script("/v1/predict", bodies(1001, None, False, 64))
        mixed = harness.wrk_script("/v1/predict", bodies(1001, names, False, 64))
        rows = [names[i % 64] for i in range(256)]
        big = harness.wrk_file_script("/v1/predict", big_body(tmp_path, "big", rows), OCTET)
        urls = {}
        for label, spin in SETTINGS.items():
            env = {
                "GOMP_SPINCOUNT": spin,
                "LORASERVE_DATA_DIR": str(tmp_path / f"data-{spin}"),
                "LORASERVE_ADAPTERS_DIR": str(tmp_path / f"adapters-{spin}"),
            }
            # Each server imports its folder into its own state (and moves the folders aside).
            shutil.copytree(tmp_path / "adapters", tmp_path / f"adapters-{spin}")
            argv = [harness.bin_path("uvicorn"), "app.main:app", "--log-level", "warning"]
            urls[label] = servers.enter_context(harness.server(argv, env))
            harness.wrk(urls[label], mixed, 8, 2)  # warm-up
        cases = {
            "base c1 p50 ms": (base, 1, "p50_ms"),
            "base c64 req/s": (base, 64, "requests_per_s"),
            "mixed c64 req/s": (mixed, 64, "requests_per_s"),
            "256 rows over 64 adapters, model ms": (big, 1, "model_p50_ms"),
        }
        runs: dict[str, dict[str, list[float]]] = {s: {c: [] for c in cases} for s in SETTINGS}
        for _ in range(args.rounds):
            for label, url in urls.items():
                for case, (script, connections, key) in cases.items():
                    stats = harness.wrk(url, script, connections, args.duration)
                    runs[label][case].append(stats[key])
    medians = {s: {c: statistics.median(v) for c, v in by.items()} for s, by in runs.items()}
    for label, by in medians.items():
        print(label + ": " + ", ".join(f"{c} {v:.2f}" for c, v in by.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"medians": medians, "rounds": runs}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
