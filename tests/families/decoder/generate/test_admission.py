"""The engine's admission and failures: requests that can never fit, fairness between requests
and projects, clients that leave while waiting, and a failure that stays in its sequence."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import app.families.decoder.generate.sequence as sequence_module
from app.adapters import AdapterRegistry, base_info
from app.engine import Predictor
from app.errors import InvalidInput, QueueFull, ServiceUnavailable
from app.families import load_family
from app.families.decoder.generate.engine import GenerationEngine
from app.families.decoder.generate.sampling import SamplingParams

PER_TOKEN = 2 * 2 * 2 * 8 * 4  # K and V, 2 layers, 2 KV heads of 8, float32 (tiny llama)


def greedy(n: int, seed: int | None = None) -> SamplingParams:
    return SamplingParams(n, temperature=0, ignore_eos=True, seed=seed)


@pytest.fixture(scope="module")
def family(causal_folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    return load_family(causal_folders["llama"], torch.device("cpu"))


@pytest.fixture(scope="module")
def base(family: Any) -> Any:
    return family.base


@pytest.fixture
def make_engine(family: Any, base: Any, tmp_path: Path) -> Iterator[Any]:
    registry = AdapterRegistry.local(tmp_path, base_info(base), 64, 1 << 30)
    started: list[GenerationEngine] = []

    def make(**overrides: Any) -> GenerationEngine:
        args: dict[str, Any] = {
            "kv_cache_bytes": 1 << 24, "max_running_seqs": 8, "prefill_chunk_tokens": 16,
            "max_waiting_seqs": 16, "queue_timeout_s": 30.0,
        }  # fmt: skip
        args.update(overrides)
        engine = GenerationEngine(Predictor(base, registry, 1 << 30), family.causal, **args)
        engine.start()
        started.append(engine)
        return engine

    yield make
    for engine in started:
        engine.stop()


def prompt(family: Any, text: str = "The capital of France is") -> list[int]:
    return list(family.causal.encode(text))


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


async def drain(events: Any, order: list[str] | None = None, tag: str = "") -> list[int]:
    tokens: list[int] = []
    async for event in events:
        if order is not None:
            order.append(tag)
        tokens += [c.token for c in event.tokens]
    return tokens


async def wait_until(condition: Any, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.005)


def test_more_sequences_than_a_request_may_hold_is_invalid_at_once(make_engine, family) -> None:
    engine = make_engine(max_waiting_seqs=8, max_seqs_per_request=64)
    ids = prompt(family)

    async def ask() -> None:
        engine.submit([(ids, greedy(4))] * 9, None)

    with pytest.raises(InvalidInput) as refused:
        run(ask())
    assert refused.value.param == "n" and "at most 8" in refused.value.message
    assert engine.waiting == 0 and engine.running == 0


def test_sequences_over_the_whole_kv_budget_are_invalid_at_once(make_engine, family) -> None:
    ids = prompt(family)
    # Room for three sequences of this size, never four: four is refused before any runs.
    engine = make_engine(kv_cache_bytes=3 * (len(ids) + 40) * PER_TOKEN)

    async def ask(n: int) -> list[list[int]]:
        streams = engine.submit([(ids, greedy(40))] * n, None)
        return [await drain(s) for s in streams]

    with pytest.raises(InvalidInput) as refused:
        run(ask(4))
    assert refused.value.param == "max_tokens" and "KV_CACHE_BYTES" in refused.value.message
    assert engine.waiting == 0
    answers = run(ask(3))
    assert len(answers) == 3 and all(a == answers[0] for a in answers)


def test_a_small_request_is_not_held_behind_a_big_one(make_engine, family) -> None:
    # Two run at a time. A request of six sequences comes first, then one of another project:
    # the newcomer joins at the first free place, not after the six.
    engine = make_engine(max_running_seqs=2)
    ids = prompt(family)
    order: list[str] = []

    async def scenario() -> None:
        big = engine.submit([(ids, greedy(200))] * 6, None, project="a")
        tasks = [asyncio.create_task(drain(s, order, f"big{i}")) for i, s in enumerate(big)]
        await wait_until(lambda: engine.running == 2)
        (small,) = engine.submit([(ids, greedy(30))], None, project="b")
        tasks.append(asyncio.create_task(drain(small, order, "small")))
        await asyncio.gather(*tasks)

    run(scenario())
    first = [tag for i, tag in enumerate(order) if tag not in order[:i]]
    # The two running end together, and the first two places go to the newcomer and big2
    # (FIFO would have let big2 ... big5 in first).
    assert first.index("small") < first.index("big3"), first


def test_one_project_cannot_fill_the_queue_while_another_waits(make_engine, family) -> None:
    engine = make_engine(max_running_seqs=1, max_waiting_seqs=8)
    ids = prompt(family)

    async def scenario() -> None:
        (running,) = engine.submit([(ids, greedy(100))], None, project="b")
        task = asyncio.create_task(drain(running))
        await wait_until(lambda: engine.running == 1)
        mine = engine.submit([(ids, greedy(4))] * 4, None, project="a")  # half the room
        with pytest.raises(QueueFull):
            engine.submit([(ids, greedy(4))], None, project="a")
        others = engine.submit([(ids, greedy(4))] * 4, None, project="c")  # still room
        for s in [*mine, *others]:
            s.close()
        task.cancel()

    run(scenario())


def test_clients_that_leave_while_waiting_free_the_queue_at_once(make_engine, family) -> None:
    engine = make_engine(max_running_seqs=1, max_waiting_seqs=4)
    ids = prompt(family)
    before = engine.tokens_prefilled

    async def scenario() -> None:
        (first,) = engine.submit([(ids, greedy(60))], None)
        task = asyncio.create_task(drain(first))
        await wait_until(lambda: engine.running == 1)
        gone = engine.submit([(ids, greedy(8))] * 4, None)
        assert engine.waiting == 4
        for s in gone:  # closed unread, as when a client leaves before its first token
            s.close()
        assert engine.waiting == 0
        again = engine.submit([(ids, greedy(8))] * 4, None)  # the room is free again
        await task
        await asyncio.gather(*(drain(s) for s in again))

    run(scenario())
    # The prompts of the four that left were never computed: the first and the four after.
    assert engine.tokens_prefilled - before == 5 * len(ids)


def test_a_sampling_failure_fails_its_own_sequence_only(make_engine, family, monkeypatch) -> None:
    engine = make_engine()
    ids = prompt(family)
    real = sequence_module.choose

    def choose(
        logits: torch.Tensor, params: SamplingParams, gen: torch.Generator, argmax: Any = None
    ) -> Any:
        if params.seed == 666:
            raise RuntimeError("probability tensor contains either inf, nan or element < 0")
        return real(logits, params, gen, argmax)

    monkeypatch.setattr(sequence_module, "choose", choose)

    async def scenario() -> tuple[list[int], BaseException, list[int]]:
        (alone,) = engine.submit([(ids, greedy(20))], None)
        expected = await drain(alone)
        good, bad = engine.submit([(ids, greedy(20)), (ids, greedy(20, seed=666))], None)
        good_task = asyncio.create_task(drain(good))
        with pytest.raises(ServiceUnavailable) as failed:
            await drain(bad)
        got = await good_task
        await wait_until(lambda: engine.running == 0 and engine.cache.pool.used == 0)
        return expected, failed.value, got

    expected, error, got = run(scenario())
    assert got == expected and len(got) == 20
    assert "probability" not in error.message and "logged" in error.message
