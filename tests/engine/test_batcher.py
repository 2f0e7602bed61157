"""The batcher: rows never mix, bad requests fail alone, the queue is bounded, hot adapters merge."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from pathlib import Path

import pytest
import torch

from app.adapters import BaseInfo
from app.engine import Batcher, ComputeThread, DirectRunner, Predictor
from app.errors import AdapterNotFound, QueueFull
from app.families import load_base_model
from support.helpers import (
    RegistryByName,
    adapter_files,
    lora_tensors,
    peft_config,
    reference_forward,
    write_base_model,
)

SIZES = [16, 8, 4]
NO_METRICS = lambda rows, mode: None  # noqa: E731


@pytest.fixture
def setup(tmp_path: Path):
    folder = write_base_model(tmp_path / "base", SIZES)
    base = load_base_model(folder, torch.device("cpu"))
    linears = {n: (i.in_features, i.out_features) for n, i in base.linears().items()}
    info = BaseInfo(linears, base.name, base.fingerprint, base.device, base.dtype)
    registry = RegistryByName.local(tmp_path / "adapters", info, 64, 1 << 30)
    specs = {}
    for i in range(6):
        targets = [("layer1", "layer2"), ("layer1",), ("layer2",)][i % 3]
        config = peft_config(1 + i, 2.0, targets)
        tensors = lora_tensors(SIZES, targets, 1 + i, seed=i)
        registry.upload(f"a{i}", *adapter_files(config, tensors))
        specs[f"a{i}"] = (config, tensors)
    return folder, Predictor(base, registry, 1 << 30), specs


def make_batcher(
    predictor: Predictor,
    on_batch=NO_METRICS,
    *,
    max_batch_rows: int,
    batch_wait_ms: float,
    max_queue_rows: int = 1000,
) -> Batcher:
    return Batcher(
        predictor, ComputeThread(), on_batch, max_batch_rows, batch_wait_ms, max_queue_rows
    )


def direct(predictor: Predictor, on_batch=NO_METRICS, merge_rows: int = 64) -> DirectRunner:
    return DirectRunner(predictor, ComputeThread(), on_batch, merge_rows, max_queue_rows=1000)


def test_concurrent_requests_each_get_their_own_rows(setup) -> None:
    folder, predictor, specs = setup
    batch_sizes: list[int] = []
    batcher = make_batcher(
        predictor,
        lambda rows, mode: batch_sizes.append(rows),
        max_batch_rows=64,
        batch_wait_ms=20,
        max_queue_rows=10_000,
    )
    batcher.start()
    rng = random.Random(0)
    requests = []
    for _ in range(60):
        n = rng.randint(1, 6)
        names = [rng.choice([*specs, None]) for _ in range(n)]
        requests.append((torch.randn(n, 16), names, rng.choice(["auto", "unmerged", "merged"])))

    async def main():
        return await asyncio.gather(
            *(batcher.submit(x, names, mode, "adapters") for x, names, mode in requests)
        )

    try:
        results = asyncio.run(main())
    finally:
        batcher.stop()
    assert max(batch_sizes) > 6  # requests really were batched together
    for (x, names, mode), result in zip(requests, results, strict=True):
        assert result.outputs.shape == (len(x), 4)
        if mode != "auto":
            assert result.mode == mode
        for row, name in enumerate(names):
            config, tensors = specs[name] if name else (None, None)
            ref = reference_forward(folder, x[row : row + 1], config, tensors)
            torch.testing.assert_close(
                result.outputs[row : row + 1].double(), ref, rtol=1e-4, atol=1e-5
            )


def test_an_unknown_adapter_fails_only_its_own_request(setup) -> None:
    _, predictor, _ = setup
    batcher = make_batcher(predictor, max_batch_rows=64, batch_wait_ms=50, max_queue_rows=100)
    batcher.start()

    async def main():
        good = batcher.submit(torch.randn(2, 16), ["a0", None], "auto", "adapters")
        bad = batcher.submit(torch.randn(1, 16), ["missing"], "auto", "adapter")
        return await asyncio.gather(good, bad, return_exceptions=True)

    try:
        good, bad = asyncio.run(main())
    finally:
        batcher.stop()
    assert good.outputs.shape == (2, 4)
    assert isinstance(bad, AdapterNotFound) and bad.param == "adapter"


def test_a_full_queue_is_refused_at_once(setup) -> None:
    _, predictor, _ = setup
    release = threading.Event()
    forward = predictor.forward

    def slow_forward(*args, **kwargs):
        release.wait(10)
        return forward(*args, **kwargs)

    predictor.forward = slow_forward  # type: ignore[method-assign]
    batcher = make_batcher(predictor, max_batch_rows=4, batch_wait_ms=0, max_queue_rows=8)
    batcher.start()

    async def main():
        first = asyncio.ensure_future(batcher.submit(torch.randn(4, 16), [None] * 4, "auto", "a"))
        await asyncio.sleep(0.2)  # the inference thread now holds it
        queued = asyncio.ensure_future(batcher.submit(torch.randn(8, 16), [None] * 8, "auto", "a"))
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFull) as info:
            await batcher.submit(torch.randn(1, 16), [None], "auto", "a")
        assert info.value.status == 503 and info.value.headers["Retry-After"] == "1"
        assert info.value.code == "overloaded" and "(8 rows waiting)" in info.value.message
        release.set()
        return await asyncio.gather(first, queued)

    try:
        done = asyncio.run(main())
    finally:
        batcher.stop()
    assert [len(r.outputs) for r in done] == [4, 8]


def test_an_adapter_with_a_full_batch_waiting_gets_a_merged_copy(setup) -> None:
    _, predictor, _ = setup
    batcher = make_batcher(predictor, max_batch_rows=8, batch_wait_ms=30)
    batcher.start()

    async def burst():
        return await asyncio.gather(
            *(batcher.submit(torch.randn(1, 16), ["a0"], "auto", "adapter") for _ in range(24))
        )

    try:
        asyncio.run(burst())
        for _ in range(100):
            if predictor.is_merged("a0"):
                break
            threading.Event().wait(0.02)
        assert predictor.is_merged("a0")
        later = asyncio.run(batcher.submit(torch.randn(2, 16), ["a0", "a0"], "auto", "adapter"))
        assert later.mode == "merged"
        mixed = asyncio.run(batcher.submit(torch.randn(2, 16), ["a0", None], "auto", "adapters"))
        assert mixed.mode == "unmerged"
    finally:
        batcher.stop()


def test_direct_runner_runs_each_request_alone(setup) -> None:
    folder, predictor, specs = setup
    batches: list[tuple[int, str]] = []
    runner = direct(predictor, lambda rows, mode: batches.append((rows, mode)))
    x = torch.randn(3, 16)
    result = asyncio.run(runner.submit(x, ["a1", None, "a2"], "unmerged", "adapters"))
    assert result.mode == "unmerged" and result.queue_ms >= 0 and result.model_ms >= 0
    assert batches == [(3, "unmerged")] and runner.queued_rows == 0
    for row, name in enumerate(["a1", None, "a2"]):
        config, tensors = specs[name] if name else (None, None)
        ref = reference_forward(folder, x[row : row + 1], config, tensors)
        torch.testing.assert_close(
            result.outputs[row : row + 1].double(), ref, rtol=1e-4, atol=1e-5
        )


def test_batches_never_pass_max_batch_rows_but_an_oversize_request_runs_alone(setup) -> None:
    _, predictor, _ = setup
    entered, release = threading.Event(), threading.Event()
    forward = predictor.forward

    def held_forward(*args, **kwargs):
        entered.set()
        release.wait(10)
        return forward(*args, **kwargs)

    predictor.forward = held_forward  # type: ignore[method-assign]
    batch_sizes: list[int] = []
    batcher = make_batcher(
        predictor, lambda rows, mode: batch_sizes.append(rows), max_batch_rows=8, batch_wait_ms=0
    )
    batcher.start()
    sizes = [3, 3, 3, 5, 2, 1, 10, 3]

    async def main():
        first = asyncio.ensure_future(batcher.submit(torch.randn(1, 16), [None], "auto", "a"))
        await asyncio.to_thread(entered.wait, 10)  # the inference thread holds the first
        queued = [
            asyncio.ensure_future(batcher.submit(torch.randn(n, 16), ["a0"] * n, "auto", "a"))
            for n in sizes
        ]
        for _ in range(1000):  # all queued before the first finishes
            if batcher.queued_rows >= sum(sizes):
                break
            await asyncio.sleep(0)
        assert batcher.queued_rows == sum(sizes)
        release.set()
        return await asyncio.gather(first, *queued)

    try:
        done = asyncio.run(main())
    finally:
        batcher.stop()
    assert [len(r.outputs) for r in done] == [1, *sizes]
    # FIFO, as many whole requests as fit in 8 rows; 10 rows alone are over the cap but still run.
    assert batch_sizes == [1, 6, 8, 3, 10, 3]
    assert batcher.queued_rows == 0


def test_direct_runner_honours_the_mode_and_the_field_name(setup) -> None:
    _, predictor, _ = setup
    runner = direct(predictor)
    runner.start()
    predictor.merge("a0")
    x = torch.randn(2, 16)
    assert asyncio.run(runner.submit(x, ["a0", "a0"], "auto", "adapter")).mode == "merged"
    assert asyncio.run(runner.submit(x, ["a0", "a0"], "unmerged", "adapter")).mode == "unmerged"
    with pytest.raises(AdapterNotFound) as info:
        asyncio.run(runner.submit(x, ["nope", "nope"], "auto", "adapter"))
    assert info.value.param == "adapter"
    runner.stop()


def test_a_replaced_adapter_gets_a_new_merged_copy_when_hot_again(setup) -> None:
    """Rows name versions: the new version of a name is a new key, with its own merged copy."""
    _, predictor, specs = setup
    batcher = make_batcher(predictor, max_batch_rows=8, batch_wait_ms=30)
    batcher.start()

    async def burst(version: str):
        return await asyncio.gather(
            *(batcher.submit(torch.randn(1, 16), [version], "auto", "adapter") for _ in range(24))
        )

    def wait_merged(version: str) -> bool:
        for _ in range(200):
            if predictor.is_merged(version):
                return True
            threading.Event().wait(0.02)
        return False

    try:
        old = predictor.registry.get("a0").version
        asyncio.run(burst(old))
        assert wait_merged(old)
        config, tensors = specs["a1"]
        predictor.registry.upload("a0", *adapter_files(config, tensors), overwrite=True)
        new = predictor.registry.get("a0").version
        assert new != old and not predictor.is_merged(new)
        asyncio.run(burst(new))
        assert wait_merged(new)
    finally:
        batcher.stop()


def test_an_adapter_is_merged_once_a_full_batch_of_its_rows_is_waiting(setup) -> None:
    _, predictor, _ = setup
    merge_threads: list[str] = []
    merge = predictor.merge

    def recorded_merge(name: str, param: str = "adapter") -> None:
        merge_threads.append(threading.current_thread().name)
        merge(name, param)

    predictor.merge = recorded_merge  # type: ignore[method-assign]
    batcher = make_batcher(predictor, max_batch_rows=4, batch_wait_ms=0)
    batcher.start()
    try:
        asyncio.run(batcher.submit(torch.randn(3, 16), ["a0"] * 3, "auto", "a"))
        asyncio.run(batcher.submit(torch.randn(4, 16), ["a1"] * 4, "unmerged", "a"))
        assert not predictor.is_merged("a0")
        assert not predictor.is_merged("a1")  # not auto
        hot = asyncio.run(batcher.submit(torch.randn(4, 16), ["a0"] * 4, "auto", "a"))
        assert predictor.is_merged("a0")
        assert hot.mode == "merged"  # merged before the batch that made it hot, which used it
        # On the compute thread, where all model work runs (app/engine/compute.py).
        assert [name.split("_")[0] for name in merge_threads] == ["inference"]
    finally:
        batcher.stop()


def run_behind_a_held_batch(predictor: Predictor, hot: list[tuple[int, str]]):
    """Hold the compute thread in a first one-row batch, queue `auto` requests of (rows,
    adapter) behind it, let them run (batches of 4), and give every result and every merge."""
    entered, forwarding = threading.Event(), threading.Event()
    merges: list[str] = []
    merge, forward = predictor.merge, predictor.forward

    def recorded_merge(name: str, param: str = "adapter") -> bool:
        merges.append(name)
        return merge(name, param)

    def held_forward(*args, **kwargs):
        entered.set()
        forwarding.wait(30)
        return forward(*args, **kwargs)

    predictor.merge = recorded_merge  # type: ignore[method-assign]
    predictor.forward = held_forward  # type: ignore[method-assign]
    engine = make_batcher(predictor, max_batch_rows=4, batch_wait_ms=0)
    engine.start()

    async def main():
        first = asyncio.ensure_future(engine.submit(torch.randn(1, 16), [None], "auto", "a"))
        await asyncio.to_thread(entered.wait, 30)
        queued = [
            asyncio.ensure_future(engine.submit(torch.randn(n, 16), [name] * n, "auto", "a"))
            for n, name in hot
        ]
        for _ in range(1000):
            if engine.queued_rows >= sum(n for n, _ in hot):
                break
            await asyncio.sleep(0)
        forwarding.set()
        return await asyncio.gather(first, *queued)

    try:
        done = asyncio.run(main())
    finally:
        forwarding.set()
        engine.stop()
    return done, merges


def test_a_hot_adapter_is_merged_once(setup) -> None:
    _, predictor, _ = setup
    # Three batches of 4, each with a backlog of a0 of at least 4.
    done, merges = run_behind_a_held_batch(predictor, [(1, "a0")] * 12)
    assert merges == ["a0"]  # later batches found the merged copy
    assert [r.mode for r in done[1:]] == ["merged"] * 12


def test_merged_requests_use_and_keep_the_merged_copy(setup) -> None:
    folder, predictor, specs = setup
    modes: list[str] = []
    batcher = make_batcher(
        predictor, lambda rows, mode: modes.append(mode), max_batch_rows=64, batch_wait_ms=0
    )
    batcher.start()
    x = torch.randn(2, 16)
    try:
        result = asyncio.run(batcher.submit(x, ["a2", "a2"], "merged", "adapters"))
    finally:
        batcher.stop()
    assert result.mode == "merged" and modes == ["merged"]
    assert predictor.is_merged("a2")
    config, tensors = specs["a2"]
    ref = reference_forward(folder, x, config, tensors)
    torch.testing.assert_close(result.outputs.double(), ref, rtol=1e-4, atol=1e-5)


def test_direct_runner_reports_the_time_in_the_model(setup) -> None:
    _, predictor, _ = setup
    forward = predictor.forward

    def slow_forward(*args, **kwargs):
        threading.Event().wait(0.1)
        return forward(*args, **kwargs)

    predictor.forward = slow_forward  # type: ignore[method-assign]
    began = time.perf_counter()
    result = asyncio.run(direct(predictor).submit(torch.randn(1, 16), [None], "auto", "a"))
    total_ms = (time.perf_counter() - began) * 1000
    # The forward waited 0.1 s: that time is the model's, and the queue's is what is left of
    # the total (no bound on the machine's speed: it is shared).
    assert 100 <= result.model_ms <= total_ms
    assert 0 <= result.queue_ms <= total_ms - result.model_ms


def test_every_adapter_due_is_merged_before_the_batch_runs(setup) -> None:
    _, predictor, _ = setup
    # The next batch sees 4 rows of each waiting: both are due.
    done, merges = run_behind_a_held_batch(predictor, [(4, "a0"), (4, "a1")])
    assert merges == ["a0", "a1"]
    assert [r.mode for r in done] == ["unmerged", "merged", "merged"]


def test_a_request_arriving_inside_the_batch_window_joins_the_batch(setup) -> None:
    _, predictor, _ = setup
    # A window under a second, and a third request that fills the batch: the batch leaves as
    # soon as it is full, so the test does not sit out the window.
    batch_sizes: list[int] = []
    batcher = make_batcher(
        predictor, lambda rows, mode: batch_sizes.append(rows), max_batch_rows=3, batch_wait_ms=900
    )

    async def main():
        # Two queued before the thread starts: company has been coming, so the batch waits.
        early = [
            asyncio.ensure_future(batcher.submit(torch.randn(1, 16), ["a0"], "unmerged", "a"))
            for _ in range(2)
        ]
        for _ in range(1000):
            if batcher.queued_rows >= 2:
                break
            await asyncio.sleep(0)
        batcher.start()
        await asyncio.sleep(0.05)
        late = batcher.submit(torch.randn(1, 16), ["a1"], "unmerged", "a")
        return await asyncio.gather(*early, late)

    try:
        done = asyncio.run(main())
    finally:
        batcher.stop()
    assert [len(r.outputs) for r in done] == [1, 1, 1]
    assert batch_sizes == [3]


def test_direct_runner_merges_an_adapter_with_a_full_batch_waiting(setup) -> None:
    _, predictor, _ = setup
    runner = direct(predictor, merge_rows=4)
    x = torch.randn(3, 16)
    assert asyncio.run(runner.submit(x, ["a0"] * 3, "auto", "a")).mode == "unmerged"
    assert asyncio.run(runner.submit(x, ["a1"] * 3, "unmerged", "a")).mode == "unmerged"

    gate = threading.Event()
    runner.compute.submit(gate.wait, 30)  # the compute thread busy: both requests queue up

    async def burst():
        tasks = [asyncio.ensure_future(runner.submit(x, ["a0"] * 3, "auto", "a")) for _ in "ab"]
        for _ in range(1000):
            if runner.queued_rows >= 6:
                break
            await asyncio.sleep(0)
        gate.set()
        return await asyncio.gather(*tasks)

    # Two requests of 3 rows waiting together: 6 >= 4, so BATCHING=false merges a0 as well.
    assert [r.mode for r in asyncio.run(burst())] == ["merged", "merged"]
    assert predictor.is_merged("a0")
    assert not predictor.is_merged("a1")  # not auto
    assert runner.queued_rows == 0


def test_direct_runner_refuses_rows_past_its_queue(setup) -> None:
    _, predictor, _ = setup
    runner = DirectRunner(predictor, ComputeThread(), NO_METRICS, 64, max_queue_rows=4)
    with pytest.raises(QueueFull):
        asyncio.run(runner.submit(torch.randn(5, 16), [None] * 5, "auto", "a"))
    assert runner.queued_rows == 0
