"""The one thread that runs the service's model work: load, forwards, merges.

Why one thread: PyTorch's CPU kernels run on OpenMP (libgomp), which gives every thread that
starts a parallel region a team of worker threads of its own, kept for that thread's life. Once
the process holds more OpenMP threads than it has cores, libgomp stops spinning between
parallel regions and puts its workers to sleep, so a forward made of many small ops (the mixed
adapter path) pays a wake-up per op: on two cores, 1.6-1.8x the base instead of 1.3-1.4x
(bench/threads.py). So the model is loaded, run and merged here; request handlers check inputs
with numpy, which starts no team; a training job runs on a thread that ends with the job, and
its team with it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class ComputeThread:
    """A single long-lived worker thread named `inference`; work runs on it in order."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, initializer=_name_thread)

    def submit(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        return self._executor.submit(fn, *args, **kwargs)

    def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `fn` on the thread and wait for it (start-up work, tests)."""
        return self.submit(fn, *args, **kwargs).result()

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `fn` on the thread; the event loop waits without blocking."""
        return await asyncio.wrap_future(self.submit(fn, *args, **kwargs))

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


def _name_thread() -> None:
    threading.current_thread().name = "inference"  # as logs, py-spy and tests see it
