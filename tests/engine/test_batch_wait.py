"""When the batcher waits for company: never under light load; under load, until the batch is full.

The wait is ten minutes, so a request that waited when it should not have never comes back (the
20 s guard fails the test); a batch that did not wait when it should have shows in the batch sizes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
import torch

from app.adapters import BaseInfo
from app.engine import Batcher, ComputeThread, Predictor
from app.families import load_base_model
from support.helpers import RegistryByName, write_base_model

WAIT_MS = 600_000


@pytest.fixture
def predictor(tmp_path: Path) -> Predictor:
    base = load_base_model(write_base_model(tmp_path / "base"), torch.device("cpu"))
    linears = {n: (i.in_features, i.out_features) for n, i in base.linears().items()}
    info = BaseInfo(linears, base.name, base.fingerprint, base.device, base.dtype)
    registry = RegistryByName.local(tmp_path / "adapters", info, 64, 1 << 20)
    return Predictor(base, registry, 1 << 20)


class Held:
    """Holds every forward until released; records the threads the model ran on."""

    def __init__(self, predictor: Predictor) -> None:
        self.entered, self.release = threading.Event(), threading.Event()
        self.threads: list[str] = []
        forward = predictor.forward

        def held_forward(*args, **kwargs):
            self.threads.append(threading.current_thread().name)
            self.entered.set()
            self.release.wait(30)
            return forward(*args, **kwargs)

        predictor.forward = held_forward  # type: ignore[method-assign]


def started(predictor: Predictor, max_batch_rows: int) -> tuple[Batcher, list[int]]:
    sizes: list[int] = []
    batcher = Batcher(
        predictor,
        ComputeThread(),
        lambda rows, mode: sizes.append(rows),
        max_batch_rows,
        batch_wait_ms=WAIT_MS,
        max_queue_rows=1000,
    )
    batcher.start()
    return batcher, sizes


def submit(batcher: Batcher, rows: int = 1) -> asyncio.Future:
    return asyncio.ensure_future(batcher.submit(torch.randn(rows, 16), [None] * rows, "auto", "a"))


async def until_queued(batcher: Batcher, rows: int) -> None:
    for _ in range(1000):
        if batcher.queued_rows >= rows:
            break
        await asyncio.sleep(0)
    assert batcher.queued_rows == rows


def run(batcher: Batcher, main: Coroutine[Any, Any, Any]) -> Any:
    try:
        return asyncio.run(asyncio.wait_for(main, 20))
    finally:
        batcher.stop()


def test_a_lone_request_runs_at_once_even_after_a_lone_batch(predictor) -> None:
    batcher, sizes = started(predictor, max_batch_rows=8)

    async def main():
        first = await submit(batcher, 3)
        second = await submit(batcher, 1)
        return first, second

    first, second = run(batcher, main())
    assert sizes == [3, 1]
    assert first.outputs.shape == (3, 4) and second.outputs.shape == (1, 4)
    assert batcher.queued_rows == 0


def test_under_load_a_batch_waits_until_it_is_full(predictor) -> None:
    held = Held(predictor)
    batcher, sizes = started(predictor, max_batch_rows=4)

    async def main():
        first = submit(batcher)
        await asyncio.to_thread(held.entered.wait, 30)
        early = [submit(batcher), submit(batcher)]
        await until_queued(batcher, 2)
        held.release.set()  # two requests queued: the next batch waits for company
        await asyncio.sleep(0.05)
        late = [submit(batcher), submit(batcher)]
        return await asyncio.gather(first, *early, *late)

    done = run(batcher, main())
    assert sizes == [1, 4]
    assert [len(r.outputs) for r in done] == [1, 1, 1, 1, 1]
    assert set(held.threads) == {"inference"}  # the model never runs on the event loop
    assert batcher.queued_rows == 0


def test_after_a_busy_batch_a_lone_request_waits_for_company(predictor) -> None:
    held = Held(predictor)
    batcher, sizes = started(predictor, max_batch_rows=2)

    async def main():
        first = submit(batcher)
        await asyncio.to_thread(held.entered.wait, 30)
        busy = [submit(batcher), submit(batcher)]
        await until_queued(batcher, 2)
        held.release.set()
        await asyncio.gather(first, *busy)  # batches of 1, then 2 requests
        lone = submit(batcher)
        await asyncio.sleep(0.05)
        company = submit(batcher)
        return await asyncio.gather(lone, company)

    run(batcher, main())
    assert sizes == [1, 2, 2]


def test_results_report_the_time_queued_and_the_time_in_the_model(predictor) -> None:
    held = Held(predictor)
    batcher, _ = started(predictor, max_batch_rows=1)

    async def main():
        began = time.perf_counter()
        first = submit(batcher)
        await asyncio.to_thread(held.entered.wait, 30)
        second = submit(batcher)
        await asyncio.sleep(0.1)  # the first holds the model, the second waits behind it
        held.release.set()
        results = await asyncio.gather(first, second)
        return results, (time.perf_counter() - began) * 1000

    (first, second), total_ms = run(batcher, main())
    assert 50 <= first.model_ms <= total_ms
    assert 50 <= second.queue_ms <= total_ms
    assert 0 <= first.queue_ms <= total_ms and 0 <= second.model_ms <= total_ms


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_failing_batch_fails_its_requests_and_the_thread_goes_on(predictor) -> None:
    forward = predictor.forward
    calls: list[int] = []

    def fails_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return forward(*args, **kwargs)

    predictor.forward = fails_once  # type: ignore[method-assign]
    batcher, _ = started(predictor, max_batch_rows=8)
    handler = Records()
    logger = logging.getLogger("app.engine.batcher")
    logger.addHandler(handler)

    async def main():
        with pytest.raises(RuntimeError, match="boom"):
            await submit(batcher)
        return await submit(batcher)

    try:
        after = run(batcher, main())
    finally:
        logger.removeHandler(handler)
    assert after.outputs.shape == (1, 4)
    assert [r.getMessage() for r in handler.records] == ["inference batch failed"]
    assert handler.records[0].exc_info is not None  # with its traceback
