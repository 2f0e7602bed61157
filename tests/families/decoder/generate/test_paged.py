"""The paged KV cache in the engine: memory by each sequence's own tokens, and prefix hits that
change no token, alone or in mixed batches."""

from __future__ import annotations

import asyncio

import pytest

from app.api.observability import generation_metrics
from app.families.decoder.generate.sampling import SamplingParams
from support.generate import PROMPTS, run, run_tokens, start

BLOCK = 4


def gauge(engine, name: str) -> float:
    (family,) = [m for m in generation_metrics(engine) if m.name == name]
    return float(family.samples[0].value)


def test_one_long_and_fifteen_short_hold_their_own_tokens_rounded_up(served, engines) -> None:
    s = served["llama"]
    engine = start(
        engines,
        s.engine(kv_block_tokens=BLOCK, prefix_caching=False, max_running_seqs=16),
    )
    long_prompt, short = s.encode(PROMPTS[1]) * 3, s.encode("0 1")
    params = SamplingParams(24, temperature=0, ignore_eos=True)
    seen: list[tuple[float, int]] = []  # (gauge, the running sequences' tokens in blocks)
    step = engine._step

    def watched() -> None:
        step()
        blocks = sum(-(-len(q.tokens) // BLOCK) for q in engine._running)
        seen.append((gauge(engine, "loraserve_kv_cache_bytes"), blocks))

    engine._step = watched  # type: ignore[method-assign]

    async def all_of_them() -> None:
        jobs = [run_tokens(engine, long_prompt, None, params)]
        jobs += [run_tokens(engine, short, None, params) for _ in range(15)]
        await asyncio.gather(*jobs)

    run(all_of_them())
    block_bytes = BLOCK * engine.cache.bytes_per_token
    assert max(g for g, _ in seen) > 0
    assert all(g <= blocks * block_bytes for g, blocks in seen)
    # A slot per sequence sized for the longest would hold 16 times the long one.
    longest = -(-(len(long_prompt) + 24) // BLOCK) * block_bytes
    assert max(g for g, _ in seen) < 4 * longest
    assert gauge(engine, "loraserve_kv_cache_bytes") == 0


@pytest.mark.parametrize("name", [None, "r4", "r8-all"])
def test_a_prefix_hit_gives_the_tokens_of_a_miss(served, engines, name) -> None:
    s = served["llama"]
    version = s.versions[name] if name else None
    cold = start(engines, s.engine(kv_block_tokens=BLOCK, prefix_caching=False))
    warm = start(engines, s.engine(kv_block_tokens=BLOCK))
    prompt = s.encode(PROMPTS[1])
    other = [*prompt[:-3], *s.encode("0 1 2")]  # the same start, another end
    want = [run(run_tokens(cold, p, version)) for p in (prompt, other)]
    assert run(run_tokens(warm, prompt, version)) == want[0]
    assert warm.cache.pool.hits == 0
    assert [run(run_tokens(warm, p, version)) for p in (prompt, other)] == want
    assert warm.cache.pool.hits >= 2 * (len(prompt) // BLOCK - 1) * BLOCK


def test_hits_inside_a_mixed_batch_equal_each_sequence_alone(served, engines) -> None:
    s = served["llama"]
    prompt = s.encode(PROMPTS[1])
    jobs = [(prompt, None), (prompt, "r4"), (prompt, "r8-all"), (s.encode(PROMPTS[0]), "r4")]
    cold = start(engines, s.engine(kv_block_tokens=BLOCK, prefix_caching=False))
    alone = [run(run_tokens(cold, p, s.versions[n] if n else None)) for p, n in jobs]
    warm = start(engines, s.engine(kv_block_tokens=BLOCK))
    run(run_tokens(warm, prompt, s.versions["r4"]))  # cached under r4 only

    async def together() -> list[list[int]]:
        return await asyncio.gather(
            *(run_tokens(warm, p, s.versions[n] if n else None) for p, n in jobs)
        )

    assert run(together()) == alone
    assert warm.cache.pool.hits > 0


def test_a_preempted_sequence_whose_client_leaves_is_dropped(served, engines) -> None:
    s = served["llama"]
    prompt = s.encode(PROMPTS[0])
    long = SamplingParams(200, temperature=0, ignore_eos=True)
    budget = int(1.5 * (len(prompt) + 200)) * s.engine().cache.bytes_per_token
    # Without prefix caching it cannot rejoin (its blocks would be found again) before the first
    # is done: its client leaves while it waits.
    engine = start(engines, s.engine(kv_cache_bytes=budget, prefix_caching=False))

    async def scenario() -> None:
        first = asyncio.create_task(run_tokens(engine, prompt, None, long))
        while not engine.running:  # the first joins first
            await asyncio.sleep(0.005)
        second = engine.generate(prompt, None, long)
        await anext(second)
        while not engine.preemptions:
            await asyncio.sleep(0.005)
        assert engine._preempted
        await second.aclose()  # gone while preempted
        assert len(await first) == 200
        while engine.running or engine._preempted:
            await asyncio.sleep(0.005)

    run(scenario())
    assert engine.cache.pool.used == 0 and not engine._room._running  # nothing held for it
