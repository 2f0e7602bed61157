"""GenerationEngine against transformers' and PEFT's own generate; batching, admission, limits."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from app.errors import InvalidInput, QueueFull
from app.families.decoder.generate import plan as step_plan
from app.families.decoder.generate.sampling import SamplingParams
from support.generate import (
    ADAPTERS,
    NEW,
    PROMPTS,
    hf_generate,
    hf_model,
    run,
    run_tokens,
    start,
)


@pytest.mark.parametrize("layout", ["llama", "qwen2", "gpt2"])
def test_greedy_base_equals_transformers_generate(served, engines, layout) -> None:
    s = served[layout]
    engine = start(engines, s.engine())
    hf = hf_model(s.folder)
    for text in PROMPTS:
        prompt = s.encode(text)
        assert run(run_tokens(engine, prompt, None)) == hf_generate(hf, prompt), text


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_greedy_adapter_equals_peft_generate(served, engines, name) -> None:
    s = served[ADAPTERS[name][0]]
    version = s.versions[name]
    assert not version.startswith("upload failed"), version
    engine = start(engines, s.engine())
    hf = hf_model(s.folder)
    for text in PROMPTS:
        prompt = s.encode(text)
        ours = run(run_tokens(engine, prompt, version))
        assert ours == hf_generate(s.peft[name], prompt), text
        assert ours != hf_generate(hf, prompt)  # the adapter really changes the output


@pytest.mark.parametrize("mode", ["auto", "merged", "unmerged"])
def test_a_batch_on_one_adapter_equals_peft_in_every_mode(
    served, engines, mode, monkeypatch
) -> None:
    s = served["llama"]
    engine = start(engines, s.engine())
    prompts = [s.encode(t) for t in PROMPTS]
    taken: list[str] = []  # which path each step's plan took

    def spy(name: str, make: Any) -> Any:
        def made(*args: Any) -> Any:
            taken.append(name)
            return make(*args)

        return made

    for name in ("merged_linear", "unmerged_linear"):
        monkeypatch.setattr(step_plan, name, spy(name, getattr(step_plan, name)))

    async def both() -> list[list[int]]:
        return await asyncio.gather(
            *(run_tokens(engine, p, s.versions["r8-all"], mode=mode) for p in prompts)
        )

    for prompt, ours in zip(prompts, run(both()), strict=True):
        assert ours == hf_generate(s.peft["r8-all"], prompt)
    if mode == "auto":  # merged where the batch holds more than one sequence
        assert "merged_linear" in taken
    else:
        assert set(taken) == {f"{mode}_linear"}


def test_the_step_plan_asks_the_one_policy(served, engines, monkeypatch) -> None:
    """`auto` merges through app.engine.policy: a policy that never merges keeps every step
    unmerged, where the same load above takes the merged path."""
    s = served["llama"]
    engine = start(engines, s.engine())
    asked: list[Any] = []

    def never(*args: Any, **kwargs: Any) -> bool:
        asked.append(args)
        return False

    merged: list[Any] = []
    monkeypatch.setattr(step_plan, "runs_merged", never)
    monkeypatch.setattr(step_plan, "merged_linear", lambda *a: merged.append(a))
    prompts = [s.encode(t) for t in PROMPTS]

    async def both() -> list[list[int]]:
        return await asyncio.gather(
            *(run_tokens(engine, p, s.versions["r8-all"], mode="auto") for p in prompts)
        )

    for prompt, ours in zip(prompts, run(both()), strict=True):
        assert ours == hf_generate(s.peft["r8-all"], prompt)
    assert asked and merged == []


def test_a_mixed_batch_equals_each_sequence_alone(served, engines) -> None:
    s = served["llama"]
    engine = start(engines, s.engine(prefill_chunk_tokens=8))
    chat = s.causal.apply_chat_template([{"role": "user", "content": PROMPTS[1]}])
    jobs = [
        (s.encode(PROMPTS[0]), "r4", 0.0),
        (chat, None, 0.0),
        (s.encode(PROMPTS[1]), "rslora", 0.01),
        (s.encode(PROMPTS[2]), "pattern", 0.02),
        (s.encode(PROMPTS[2]), None, 0.03),
        (chat, "r8-all", 0.05),
        (s.encode(PROMPTS[0]), "r4", 0.08),
    ]

    async def one(prompt: list[int], name: str | None, delay: float) -> list[int]:
        await asyncio.sleep(delay)  # join the running batch at a later step
        return await run_tokens(engine, prompt, s.versions[name] if name else None)

    async def together() -> list[list[int]]:
        return await asyncio.gather(*(one(*job) for job in jobs))

    mixed = run(together())
    steps = engine.steps
    for (prompt, name, _), tokens in zip(jobs, mixed, strict=True):
        alone = run(run_tokens(engine, prompt, s.versions[name] if name else None))
        assert tokens == alone, (name, len(prompt))
    assert steps < len(jobs) * NEW  # the sequences did share steps
    assert engine.cache.pool.used == 0


async def _wait_until(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


def test_a_client_that_goes_away_frees_its_slot(served, engines) -> None:
    s = served["llama"]
    engine = start(engines, s.engine())

    async def leave_early() -> None:
        stream = engine.generate(s.encode(PROMPTS[0]), None, SamplingParams(200, ignore_eos=True))
        for _ in range(2):
            await anext(stream)
        assert engine.cache.pool.used > 0
        await stream.aclose()
        await _wait_until(lambda: engine.cache.pool.used == 0 and engine.running == 0)

    run(leave_early())


@pytest.mark.parametrize("caching", [False, True])
def test_out_of_blocks_the_last_to_join_is_preempted_and_goes_on_alike(
    served, engines, caching
) -> None:
    """Two sequences the cache cannot hold to their end: the second is preempted, computed
    again from its tokens when the first is done, and ends with the tokens it would have had
    alone; nothing runs out of memory."""
    s = served["llama"]
    prompt = s.encode(PROMPTS[0])
    long = SamplingParams(200, temperature=0, ignore_eos=True)
    per_token = 2 * 2 * 2 * 8 * 4  # K and V, 2 layers, 2 KV heads of 8, float32
    budget = int(1.5 * (len(prompt) + 200) * per_token)
    engine = start(engines, s.engine(kv_cache_bytes=budget, prefix_caching=caching))
    assert engine.cache.bytes_per_token == per_token
    alone = run(run_tokens(engine, prompt, None, long))

    async def both() -> list[list[int]]:
        first = asyncio.create_task(run_tokens(engine, prompt, None, long))
        await _wait_until(lambda: engine.running == 1)
        second = asyncio.create_task(run_tokens(engine, prompt, None, long))
        return [await first, await second]

    assert run(both()) == [alone, alone]
    assert engine.preemptions >= 1
    assert engine.cache.pool.used == 0


def test_a_request_waits_for_a_place_and_the_queue_is_bounded(served, engines) -> None:
    s = served["llama"]
    prompt = s.encode(PROMPTS[0])
    long = SamplingParams(100, temperature=0, ignore_eos=True)
    engine = start(engines, s.engine(max_running_seqs=1, max_waiting_seqs=1))
    order: list[str] = []

    async def collect(tag: str) -> list[int]:
        tokens = []
        async for event in engine.generate(prompt, None, long):
            order.append(tag)
            tokens += [c.token for c in event.tokens]
        return tokens

    async def scenario() -> tuple[list[int], list[int]]:
        first = asyncio.create_task(collect("first"))
        await _wait_until(lambda: "first" in order)
        second = asyncio.create_task(collect("second"))
        await _wait_until(lambda: engine.waiting == 1)
        assert engine.running == 1
        with pytest.raises(QueueFull):
            await anext(engine.generate(prompt, None, long))
        return await first, await second

    a, b = run(scenario())
    assert a == b and len(a) == 100
    assert order.index("second") > len(order) - order[::-1].index("first") - 1  # after the first


def test_a_request_over_the_context_is_invalid(served, engines) -> None:
    s = served["llama"]
    engine = start(engines, s.engine())
    prompt = s.encode(PROMPTS[1])
    context = s.causal.context_length
    with pytest.raises(InvalidInput):
        run(anext(engine.generate(prompt, None, SamplingParams(context - len(prompt) + 1))))
    assert (
        len(
            run(run_tokens(engine, prompt, None, SamplingParams(4, temperature=0, ignore_eos=True)))
        )
        == 4
    )


def test_seeded_sampling_repeats(served, engines) -> None:
    s = served["llama"]
    engine = start(engines, s.engine())
    prompt = s.encode(PROMPTS[0])
    params = SamplingParams(NEW, temperature=1.0, top_p=0.9, top_k=20, seed=7, ignore_eos=True)
    first = run(run_tokens(engine, prompt, s.versions["r4"], params))
    second = run(run_tokens(engine, prompt, s.versions["r4"], params))
    assert first == second and len(first) == NEW
