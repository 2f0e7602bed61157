"""Where a request's time goes: the server under wrk, sampled by py-spy.

Run: .venv/bin/python bench/profile_serve.py [--case base] [--seconds 15] [--root DIR]
Starts `uvicorn app.main:app` (from --root, default this checkout: point it at another checkout
to profile an older commit the same way), drives it with wrk (64 connections unless --connections) with one-row JSON
predicts (`base`: no adapter; `mixed`: one of 64 rank-16 adapters each; `wide`: the [4096] x 5
base of bench/serve.py, one of 64 adapters each), and samples every
thread with py-spy meanwhile. Prints, per thread, the share of samples whose stack passes through
each of the busiest functions (inclusive), and the top functions by self time.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402
from bench.serve import N_ADAPTERS, RANK, bodies, write_adapters, write_wide_base  # noqa: E402


def summarize(raw: Path, top: int) -> None:
    """py-spy's raw format: `thread (idle);frame;frame;... count` per line, outermost first."""
    inclusive: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    own: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    totals: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        thread = frames[0].split(" ")[1] if " " in frames[0] else frames[0]
        n = int(count)
        totals[thread] += n
        names = [f.split(" (")[0] + " (" + f.rsplit("/", 1)[-1] for f in frames[1:]]
        for name in set(names):
            inclusive[thread][name] += n
        if names:
            own[thread][names[-1]] += n
    grand = sum(totals.values())
    for thread, n in totals.most_common():
        if n < grand * 0.02:
            continue
        print(f"\n== thread {thread}: {100 * n / grand:.1f}% of all samples")
        print("  inclusive:")
        for name, k in inclusive[thread].most_common(top):
            print(f"    {100 * k / n:5.1f}%  {name}")
        print("  self:")
        for name, k in own[thread].most_common(top // 2):
            print(f"    {100 * k / n:5.1f}%  {name}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", choices=("base", "mixed", "wide"), default="base")
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--gil", action="store_true", help="sample only the thread holding the GIL (CPU in Python)"
    )
    parser.add_argument("--root", type=Path, default=ROOT)
    parser.add_argument("--top", type=int, default=24)
    args = parser.parse_args()
    spy = shutil.which("py-spy") or harness.bin_path("py-spy")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        sizes = [4096] * 5 if args.case == "wide" else [1001, 1000, 1000]
        names = write_adapters(tmp_path / "adapters", sizes, N_ADAPTERS, RANK)
        env = {
            "LORASERVE_ADAPTERS_DIR": str(tmp_path / "adapters"),
            "LORASERVE_DATA_DIR": str(tmp_path / "data"),
        }
        if args.case == "wide":
            env["LORASERVE_BASE_MODEL"] = str(write_wide_base(tmp_path / "wide", sizes))
        argv = [harness.bin_path("uvicorn"), "app.main:app", "--log-level", "warning",
                "--app-dir", str(args.root)]  # fmt: skip
        script = harness.wrk_script(
            "/v1/predict", bodies(sizes[0], None if args.case == "base" else names, False, 64)
        )
        with harness.server(argv, env) as url:
            harness.wrk(url, script, 8, 2)  # warm-up
            pid = int(subprocess.run(["pgrep", "-f", "-n", "app.main:app --log-level"],
                                     capture_output=True, text=True, check=True).stdout.split()[0])  # fmt: skip
            raw = tmp_path / "profile.txt"
            spy_cmd = [spy, "record", "--pid", str(pid), "--duration", str(args.seconds),
                       "--rate", "250", "--format", "raw", "--threads", "--nonblocking",
                       "--output", str(raw), *(["--gil"] if args.gil else [])]  # fmt: skip
            sampler = subprocess.Popen(
                spy_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            result: list[dict] = []
            load = threading.Thread(
                target=lambda: result.append(
                    harness.wrk(url, script, args.connections, args.seconds)
                )
            )
            load.start()
            load.join()
            sampler.wait(timeout=60)
        stats = result[0]
        print(f"{args.case} c{args.connections} under py-spy: {stats['requests_per_s']:.1f} req/s, "
              f"p50 {stats['p50_ms']:.2f} ms (root {args.root}, pid {os.getpid()})")  # fmt: skip
        summarize(raw, args.top)


if __name__ == "__main__":
    main()
