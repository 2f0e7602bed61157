"""DecoderForward against transformers' own forward: prefill, chunked prefill, decode."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from app.families import load_family
from app.families.decoder.generate.cache import BlockTable, KVCache
from app.families.decoder.generate.forward import DecoderForward, Step
from support.gen_helpers import LAYOUTS

CPU = torch.device("cpu")


BLOCK = 4  # small blocks: every sequence here spans several, and some end mid-block


def _forward(folder: Path):
    family = load_family(folder, CPU)
    base = family.base
    fwd = DecoderForward(base.module, family.causal)
    cache = fwd.new_cache(base.dtype, CPU, 1 << 24, BLOCK, family.causal.context_length)
    return base, fwd, cache


def _table(cache: KVCache, tokens: int) -> list[int]:
    """The blocks of a new sequence of `tokens` tokens, taken in a scattered order (another
    sequence's block between each), as a busy cache gives them."""
    table, other = BlockTable(None), BlockTable(None)
    for n in range(1, tokens + 1):
        assert cache.grow(table, n) and cache.grow(other, n)
    return table.blocks


def _prefill(fwd: DecoderForward, ids: list[int], blocks: list[int], pos: int) -> Step:
    n = len(ids)
    positions = list(range(pos, pos + n))
    return Step.build(ids, positions, [blocks] * n, [(0, n, pos)], BLOCK, fwd.group, CPU)


def _decode(
    fwd: DecoderForward, ids: list[int], tables: list[list[int]], positions: list[int]
) -> Step:
    return Step.build(ids, positions, tables, [], BLOCK, fwd.group, CPU)


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
    blocks = _table(cache, 32)
    with torch.inference_mode():
        ours = fwd.logits(fwd.hidden(_prefill(fwd, ids, blocks, 0), cache))
    torch.testing.assert_close(ours, _hf_logits(base, ids), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_chunked_prefill_gives_the_same_last_logits(causal_folders, layout) -> None:
    base, fwd, cache = _forward(causal_folders[layout])
    ids = _prompt(17, seed=1)
    blocks = _table(cache, 32)
    with torch.inference_mode():
        fwd.hidden(_prefill(fwd, ids[:7], blocks, 0), cache)
        last = fwd.logits(fwd.hidden(_prefill(fwd, ids[7:], blocks, 7), cache))
    torch.testing.assert_close(last, _hf_logits(base, ids)[7:], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_decode_after_prefill_equals_the_full_sequence(causal_folders, layout) -> None:
    base, fwd, cache = _forward(causal_folders[layout])
    a, b = _prompt(9, seed=2), _prompt(5, seed=3)
    sa, sb = _table(cache, 11), _table(cache, 6)
    with torch.inference_mode():
        fwd.hidden(_prefill(fwd, a, sa, 0), cache)
        fwd.hidden(_prefill(fwd, b, sb, 0), cache)
        # Two decode rows (different lengths) in one step, then another step on one of them.
        out = fwd.logits(fwd.hidden(_decode(fwd, [11, 12], [sa, sb], [9, 5]), cache))
        again = fwd.logits(fwd.hidden(_decode(fwd, [13], [sa], [10]), cache))
    torch.testing.assert_close(out[0], _hf_logits(base, [*a, 11])[-1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out[1], _hf_logits(base, [*b, 12])[-1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(again[0], _hf_logits(base, [*a, 11, 13])[-1], rtol=1e-4, atol=1e-4)


def test_decode_beside_a_prefill_span_in_one_step(causal_folders) -> None:
    base, fwd, cache = _forward(causal_folders["llama"])
    a, b = _prompt(6, seed=4), _prompt(8, seed=5)
    sa, sb = _table(cache, 7), _table(cache, 8)
    with torch.inference_mode():
        fwd.hidden(_prefill(fwd, a, sa, 0), cache)
        positions = [6, *range(8)]
        step = Step.build([21, *b], positions, [sa] + [sb] * 8, [(1, 9, 0)], BLOCK, fwd.group, CPU)
        out = fwd.logits(fwd.hidden(step, cache))
    torch.testing.assert_close(out[0], _hf_logits(base, [*a, 21])[-1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out[1:], _hf_logits(base, b), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_packed_bf16_weights_give_the_plain_products_bit_for_bit(causal_folders, layout) -> None:
    ids, more = _prompt(13, seed=6), [7, 8]
    outs = []
    for pack in (False, True):
        family = load_family(causal_folders[layout], CPU, dtype="bfloat16")
        base = family.base
        fwd = DecoderForward(base.module, family.causal, pack_weights=pack)
        packed = [f for b in fwd.fused for f in (b.qkv, b.gate_up, b.o, b.down) if f is not None]
        packed = [f for f in [*packed, fwd.head] if f is not None and f.packed is not None]
        # Packing is on where asked: every fused product of a Llama-style block, and lm_head.
        assert bool(packed) == pack
        if pack and layout != "gpt2":
            assert len(packed) == 4 * len(fwd.blocks) + 1
        cache = fwd.new_cache(base.dtype, CPU, 1 << 24, BLOCK, family.causal.context_length)
        blocks = _table(cache, 32)
        with torch.inference_mode():
            first = fwd.logits(fwd.hidden(_prefill(fwd, ids, blocks, 0), cache))
            step = _decode(fwd, more, [blocks, blocks], [13, 14])
            outs.append((first, fwd.logits(fwd.hidden(step, cache))))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_packed_fp32_weights_agree_with_the_plain_products(causal_folders) -> None:
    """fp32 is packed too (oneDNN's kernels for it sum in another order than MKL's: the last
    bits differ, as transformers' own logits do on another thread count)."""
    ids = _prompt(11, seed=7)
    outs = []
    for pack in (False, True):
        family = load_family(causal_folders["llama"], CPU, dtype="float32")
        base = family.base
        fwd = DecoderForward(base.module, family.causal, pack_weights=pack)
        assert (fwd.head is not None and fwd.head.packed is not None) == pack
        cache = fwd.new_cache(base.dtype, CPU, 1 << 24, BLOCK, family.causal.context_length)
        with torch.inference_mode():
            outs.append(fwd.logits(fwd.hidden(_prefill(fwd, ids, _table(cache, 16), 0), cache)))
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(outs[1], _hf_logits(base, ids), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_in_four_ops_is_transformers_own_bit_for_bit(dtype) -> None:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

    from app.families.decoder.generate.layers import rms_norm

    for cls in (LlamaRMSNorm, Qwen2RMSNorm):
        norm = cls(48, eps=1e-6).to(dtype)
        norm.weight.data = torch.randn(48).to(dtype)
        x = (torch.randn(7, 48) * 30).to(dtype)
        with torch.inference_mode():
            assert torch.equal(rms_norm(norm, x), norm(x))
    layer_norm = torch.nn.LayerNorm(48)
    x = torch.randn(3, 48)
    assert torch.equal(rms_norm(layer_norm, x), layer_norm(x))  # not an RMSNorm: its own
