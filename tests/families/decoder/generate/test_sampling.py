"""choose(): greedy (and tiny temperatures), top-k, top-p, logprobs."""

from __future__ import annotations

import torch

from app.families.decoder.generate.sampling import SamplingParams, choose, new_generator


def _logits(seed: int = 0) -> torch.Tensor:
    return torch.randn(50, generator=torch.Generator().manual_seed(seed)) * 3


def test_greedy_is_the_argmax() -> None:
    for seed in range(5):
        logits = _logits(seed)
        assert choose(logits, SamplingParams(8, temperature=0), new_generator(0)).token == int(
            logits.argmax()
        )


def test_a_temperature_that_would_overflow_the_logits_is_greedy() -> None:
    # 1e-38 turns every logit into +-inf and the softmax into NaN; below 1e-5 is greedy.
    for temperature in (1e-38, 1e-6):
        logits = _logits(7) * 1e3
        params = SamplingParams(8, temperature=temperature, logprobs=2)
        choice = choose(logits, params, new_generator(0))
        assert choice.token == int(logits.argmax())
        assert choice.logprob is not None and choice.logprob == choice.logprob  # not NaN


def test_top_k_of_one_is_the_argmax() -> None:
    logits = _logits(1)
    params = SamplingParams(8, temperature=1.5, top_k=1)
    gen = new_generator(3)
    assert {choose(logits, params, gen).token for _ in range(20)} == {int(logits.argmax())}


def test_tiny_top_p_keeps_only_the_top_token() -> None:
    logits = _logits(2)
    params = SamplingParams(8, temperature=2.0, top_p=1e-6)
    gen = new_generator(4)
    assert {choose(logits, params, gen).token for _ in range(20)} == {int(logits.argmax())}


def test_top_k_samples_only_among_the_k_most_likely() -> None:
    logits = _logits(3)
    params = SamplingParams(8, temperature=5.0, top_k=3)
    gen = new_generator(5)
    top3 = set(torch.topk(logits, 3).indices.tolist())
    seen = {choose(logits, params, gen).token for _ in range(200)}
    assert seen == top3


def test_logprobs_are_the_log_softmax_of_the_logits() -> None:
    logits = _logits(4)
    logp = logits.log_softmax(-1)
    choice = choose(logits, SamplingParams(8, temperature=0.7, logprobs=5), new_generator(6))
    assert choice.logprob is not None
    assert abs(choice.logprob - float(logp[choice.token])) < 1e-6
    values, ids = torch.topk(logp, 5)
    assert [t for t, _ in choice.top] == ids.tolist()
    torch.testing.assert_close(torch.tensor([v for _, v in choice.top]), values)


def test_the_same_seed_draws_the_same_tokens() -> None:
    logits = _logits(5)
    params = SamplingParams(8, temperature=1.0, top_p=0.9, top_k=20)
    first, second = new_generator(7), new_generator(7)
    a = [choose(logits, params, first).token for _ in range(30)]
    b = [choose(logits, params, second).token for _ in range(30)]
    assert a == b and len(set(a)) > 1
