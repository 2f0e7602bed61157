"""Why the inference thread is slower than the main thread on the mixed path (issue 10).

Run: .venv/bin/python bench/threads.py
The seed model, 256 rows; `base`, and the stacked path over 64 (and 8 of 64) rank-16 adapters,
median ms, timed in turn round after round (bench/kernels.py `interleaved`), timed three ways:
  main         in the main thread, where everything was built
  thread       in a second thread, after the main thread has run torch work (as the service's
               inference thread runs, after the lifespan loaded the model in the main thread)
  all-thread   build and time all in a second thread; the main thread never runs torch work
Seen on this 2-core machine: the path of many small ops ("8 of 64": a plain product pair per
adapter) costs 1.6-1.8x the base in `thread`, but 1.3-1.4x in `main` and `all-thread`. The cause:
libgomp gives every thread that starts a parallel region a team of its own, kept until that thread
ends, and once it manages more OpenMP threads than there are cores it stops spinning between
parallel regions (2 teams x 2 threads on 2 cores), so the workers sleep between small ops and
each op pays a wake-up. Checked three ways: with OMP_WAIT_POLICY=PASSIVE every mode is slow
(1.8x); with a second thread's team alive, the main thread is slow too (1.7x); once that thread
has ended, its team is gone and the main thread is fast again (1.4x). The service therefore does
what `all-thread` does (app/engine/compute.py): one thread loads the model and runs all model
work, and nothing else in the process keeps a team.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.families import load_base_model  # noqa: E402
from app.lora import AdapterStack, StackedBatch, plan_scope  # noqa: E402
from app.settings import EMBEDDED_MODEL  # noqa: E402
from bench.kernels import interleaved, make_adapters  # noqa: E402


def cases() -> dict[str, Callable[[], object]]:
    base = load_base_model(EMBEDDED_MODEL, torch.device("cpu"))
    adapters = make_adapters(64, 16, torch.device("cpu"), torch.Generator().manual_seed(0))
    names, stack = list(adapters), AdapterStack.build(adapters)
    x = torch.randn(256, 1001)

    def run(plan_of: Callable[[], object] | None) -> Callable[[], object]:
        def forward() -> object:
            with torch.inference_mode(), plan_scope(plan_of() if plan_of else None):
                return base.module(x)

        return forward

    def mixed(k: int) -> Callable[[], object]:
        keys = [names[i % k] for i in range(256)]
        return lambda: StackedBatch.build(keys, stack).linear()

    return {"base": run(None), "64 adapters": run(mixed(64)), "8 of 64": run(mixed(8))}


def in_thread(work: Callable[[], dict[str, float]]) -> dict[str, float]:
    out: list[dict[str, float]] = []
    thread = threading.Thread(target=lambda: out.append(work()))
    thread.start()
    thread.join()
    return out[0]


def report(label: str, ms: dict[str, float]) -> None:
    ratios = ", ".join(f"{k} {v / ms['base']:.2f}x" for k, v in ms.items() if k != "base")
    print(f"{label:10s} base {ms['base']:6.2f} ms | {ratios}", flush=True)


def measure(fns: dict[str, Callable[[], object]]) -> dict[str, float]:
    return interleaved(torch.device("cpu"), 0.5, fns)


def main() -> None:
    report("all-thread", in_thread(lambda: measure(cases())))  # before main forks any team
    fns = cases()
    report("main", measure(fns))
    report("thread", in_thread(lambda: measure(fns)))


if __name__ == "__main__":
    main()
