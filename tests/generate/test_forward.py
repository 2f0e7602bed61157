"""DecoderForward against transformers' own forward: prefill, chunked prefill, decode."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from app.generate.forward import DecoderForward, Span, Step
from app.model import load_base_model
from tests.generate.conftest import LAYOUTS

CPU = torch.device("cpu")


def _forward(folder: Path):
    base = load_base_model(folder, CPU)
    assert base.causal is not None
    fwd = DecoderForward(base.module, base.causal)
    cache = fwd.new_cache(base.dtype, CPU, 1 << 24, 4, base.causal.context_length)
    return base, fwd, cache


def _prefill(ids: list[int], slot: int, pos: int) -> Step:
    n = len(ids)
    return Step(
        ids=torch.tensor(ids),
        positions=torch.arange(pos, pos + n),
        decode_slots=torch.zeros(0, dtype=torch.long),
        decode_lengths=torch.zeros(0, dtype=torch.long),
        spans=(Span(0, n, slot, pos),),
    )


def _decode(ids: list[int], slots: list[int], positions: list[int]) -> Step:
    return Step(
        ids=torch.tensor(ids),
        positions=torch.tensor(positions),
        decode_slots=torch.tensor(slots),
        decode_lengths=torch.tensor(positions) + 1,
        spans=(),
    )


def _hf_logits(base, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return base.module(torch.tensor([ids])).logits[0].float()  # (T, vocab)


def _prompt(n: int, seed: int = 0) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 300, (n,), generator=gen).tolist()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_prefill_logits_equal_transformers(causal_folders, layout) -> None:
    base, fwd, cache = _forward(causal_folders[layout])
    ids = _prompt(13)
    slot = cache.allocate(32)
    with torch.inference_mode():
        ours = fwd.logits(fwd.hidden(_prefill(ids, slot, 0), cache))
    torch.testing.assert_close(ours, _hf_logits(base, ids), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_chunked_prefill_gives_the_same_last_logits(causal_folders, layout) -> None:
    base, fwd, cache = _forward(causal_folders[layout])
    ids = _prompt(17, seed=1)
    slot = cache.allocate(32)
    with torch.inference_mode():
        fwd.hidden(_prefill(ids[:7], slot, 0), cache)
        last = fwd.logits(fwd.hidden(_prefill(ids[7:], slot, 7), cache))
    torch.testing.assert_close(last, _hf_logits(base, ids)[7:], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_decode_after_prefill_equals_the_full_sequence(causal_folders, layout) -> None:
    base, fwd, cache = _forward(causal_folders[layout])
    a, b = _prompt(9, seed=2), _prompt(5, seed=3)
    sa, sb = cache.allocate(32), cache.allocate(32)
    with torch.inference_mode():
        fwd.hidden(_prefill(a, sa, 0), cache)
        fwd.hidden(_prefill(b, sb, 0), cache)
        # Two decode rows (different lengths) in one step, then another step on one of them.
        out = fwd.logits(fwd.hidden(_decode([11, 12], [sa, sb], [9, 5]), cache))
        again = fwd.logits(fwd.hidden(_decode([13], [sa], [10]), cache))
    torch.testing.assert_close(out[0], _hf_logits(base, [*a, 11])[-1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out[1], _hf_logits(base, [*b, 12])[-1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(again[0], _hf_logits(base, [*a, 11, 13])[-1], rtol=1e-4, atol=1e-4)


def test_decode_beside_a_prefill_span_in_one_step(causal_folders) -> None:
    base, fwd, cache = _forward(causal_folders["llama"])
    a, b = _prompt(6, seed=4), _prompt(8, seed=5)
    sa, sb = cache.allocate(32), cache.allocate(32)
    with torch.inference_mode():
        fwd.hidden(_prefill(a, sa, 0), cache)
        step = Step(
            ids=torch.tensor([21, *b]),
            positions=torch.tensor([6, *range(8)]),
            decode_slots=torch.tensor([sa]),
            decode_lengths=torch.tensor([7]),
            spans=(Span(1, 9, sb, 0),),
        )
        out = fwd.logits(fwd.hidden(step, cache))
    torch.testing.assert_close(out[0], _hf_logits(base, [*a, 21])[-1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out[1:], _hf_logits(base, b), rtol=1e-4, atol=1e-4)
