"""The one thread that runs the service's model work: load, forwards, merges.

Why one thread: PyTorch's CPU kernels run on OpenMP (libgomp), which gives every thread that
starts a parallel region a team of worker threads of its own, kept for that thread's life. Once
the process holds more OpenMP threads than it has cores, libgomp stops spinning between
parallel regions and puts its workers to sleep, so a forward made of many small ops (the mixed
adapter path) pays a wake-up per op: on two cores, 1.6-1.8x the base instead of 1.3-1.4x
(bench/threads.py). So the model is run and merged here (a decoder's on the generation
engine's own thread, the only one that computes for it); request handlers check inputs with
numpy, which starts no team; start-up work (the load, the engine's fused weights and KV cache)
and a training job run on a thread that ends with the work, and its team with it
(`on_passing_thread`). A team left on the loading thread made every small op of the generate
thread's steps 4-6x slower (a 64-token prefill 130-140 ms against 78 ms).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")
_Work = tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class ComputeThread:
    """A single long-lived thread named `inference`; work runs on it in order.

    A daemon thread, as the inference thread always was: a batch stuck in the model, or an
    engine nobody stopped, must not keep the process from exiting.
    """

    def __init__(self) -> None:
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="inference", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        future: Future[T] = Future()
        self._work.put((future, fn, args, kwargs))
        return future

    def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `fn` on the thread and wait for it (start-up work, tests)."""
        return self.submit(fn, *args, **kwargs).result()

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `fn` on the thread; the event loop waits without blocking."""
        return await asyncio.wrap_future(self.submit(fn, *args, **kwargs))

    def close(self, timeout: float = 10.0) -> None:
        """Finish the work already queued, then end the thread."""
        self._work.put(None)
        self._thread.join(timeout)

    def _serve(self) -> None:
        while (work := self._work.get()) is not None:
            future, fn, args, kwargs = work
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while queued
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # the caller gets it; the thread goes on
                future.set_exception(exc)
            else:
                future.set_result(result)


def on_passing_thread(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """`fn` run on a new thread that has ended when this returns (its result or its error): any
    OpenMP team it started has ended with it, so it leaves no threads to the cores' count."""
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn(*args, **kwargs))
        except BaseException as exc:  # the caller gets it
            error.append(exc)

    thread = threading.Thread(target=run, name="start-up")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]
