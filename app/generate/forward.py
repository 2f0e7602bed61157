"""One engine step of a decoder: many sequences' tokens in one forward, over the KV cache.

A step's tokens are flattened into rows: first one row per decoding sequence, then the chunks of
the prompts being prefilled (spans). Every linear layer sees all rows at once (so the per-call
plan maps each row to its sequence's adapter, app.lora); attention alone splits them up: the
decode rows attend over their slots in one batched call, each span over its own slot, causally.

The module is the transformers model, its layers used as they are (norms, projections, MLPs,
rotary tables): only the attention and the cache are ours, which is what lets sequences of
different lengths, joining at different steps, share a forward. Prefill logits equal
transformers' own forward within float tolerance (tests/generate/test_forward.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from app.generate.cache import KVCache
from app.model.causal import CausalInfo


@dataclass(frozen=True)
class Span:
    """Prefill rows start:stop are tokens `pos`.. of the sequence in `slot`."""

    start: int
    stop: int
    slot: int
    pos: int


@dataclass(frozen=True)
class Step:
    """Where each sequence's tokens sit in one forward's rows."""

    ids: Tensor  # (N,) token ids
    positions: Tensor  # (N,) each token's position in its sequence
    decode_slots: Tensor  # (B,) slots of rows 0..B-1, one decode token each
    decode_lengths: Tensor  # (B,) their lengths after this step's token
    spans: tuple[Span, ...]


def rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class DecoderForward:
    """Runs steps on a frozen causal LM of a known layout; the caller sets the plan."""

    def __init__(self, module: Any, info: CausalInfo) -> None:
        config = module.config
        self.layout = info.layout
        self.lm_head: nn.Module = module.lm_head
        self.embed: Any
        self.pos_embed: Any
        self.norm: Any
        self.rotary: Any
        if info.layout == "gpt2":
            inner = module.transformer
            self.blocks: list[Any] = list(inner.h)
            self.embed, self.pos_embed, self.norm = inner.wte, inner.wpe, inner.ln_f
            self.rotary = None
            self.heads = self.kv_heads = int(config.n_head)
            self.head_dim = int(config.n_embd) // self.heads
            scale = self.head_dim**-0.5 if getattr(config, "scale_attn_weights", True) else 1.0
            by_layer = getattr(config, "scale_attn_by_inverse_layer_idx", False)
            self.scales = [scale / (i + 1) if by_layer else scale for i in range(len(self.blocks))]
        else:
            inner = module.model
            self.blocks = list(inner.layers)
            self.embed, self.pos_embed, self.norm = inner.embed_tokens, None, inner.norm
            self.rotary = inner.rotary_emb
            self.heads = int(config.num_attention_heads)
            self.kv_heads = int(getattr(config, "num_key_value_heads", None) or self.heads)
            hidden = int(config.hidden_size)
            self.head_dim = int(getattr(config, "head_dim", None) or hidden // self.heads)
            self.scales = [
                float(getattr(b.self_attn, "scaling", self.head_dim**-0.5)) for b in self.blocks
            ]
        self.layers = len(self.blocks)

    def new_cache(
        self, dtype: torch.dtype, device: torch.device, budget: int, slots: int, length: int
    ) -> KVCache:
        return KVCache(
            self.layers, self.kv_heads, self.head_dim, dtype, device, budget, slots, length
        )

    def hidden(self, step: Step, cache: KVCache) -> Tensor:
        """(N, hidden) final hidden states of the step's rows; writes their keys and values."""
        x = self.embed(step.ids)  # (N, hidden)
        if self.pos_embed is not None:
            x = x + self.pos_embed(step.positions)
        rope = None
        if self.rotary is not None:
            cos, sin = self.rotary(x[None], step.positions[None])  # (1, N, D) each
            rope = (cos[0, :, None], sin[0, :, None])  # (N, 1, D)
        masks = _Masks.build(step, cache)
        for i, block in enumerate(self.blocks):
            if self.layout == "gpt2":
                x = x + self._gpt2_attention(i, block, block.ln_1(x), step, cache, masks)
                x = x + block.mlp(block.ln_2(x))
            else:
                h = block.input_layernorm(x)
                x = x + self._llama_attention(i, block.self_attn, h, rope, step, cache, masks)
                x = x + block.mlp(block.post_attention_layernorm(x))
        return self.norm(x)

    def logits(self, hidden: Tensor) -> Tensor:
        """(M, vocab) float32 logits of some rows' hidden states."""
        return self.lm_head(hidden).float()

    def _llama_attention(
        self,
        i: int,
        attn: Any,
        h: Tensor,
        rope: tuple[Tensor, Tensor] | None,
        step: Step,
        cache: KVCache,
        masks: _Masks,
    ) -> Tensor:
        n = h.shape[0]
        q = attn.q_proj(h).view(n, self.heads, self.head_dim)  # (N, Hq, D)
        k = attn.k_proj(h).view(n, self.kv_heads, self.head_dim)  # (N, Hkv, D)
        v = attn.v_proj(h).view(n, self.kv_heads, self.head_dim)
        if hasattr(attn, "q_norm"):  # Qwen3 normalizes each head before the rotation
            q, k = attn.q_norm(q), attn.k_norm(k)
        if rope is not None:
            cos, sin = rope
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
        out = self._attend(i, q, k, v, step, cache, masks)  # (N, Hq, D)
        return attn.o_proj(out.reshape(n, self.heads * self.head_dim))

    def _gpt2_attention(
        self, i: int, block: Any, h: Tensor, step: Step, cache: KVCache, masks: _Masks
    ) -> Tensor:
        n = h.shape[0]
        qkv = block.attn.c_attn(h)  # (N, 3 * hidden)
        q, k, v = (t.view(n, self.heads, self.head_dim) for t in qkv.chunk(3, dim=-1))
        out = self._attend(i, q, k, v, step, cache, masks)
        return block.attn.c_proj(out.reshape(n, self.heads * self.head_dim))

    def _attend(
        self,
        i: int,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        step: Step,
        cache: KVCache,
        masks: _Masks,
    ) -> Tensor:
        """(N, Hq, D): each row attends over its own sequence's cached keys, itself included."""
        keys, values = cache.k[i], cache.v[i]  # (S, Hkv, L, D)
        b = len(step.decode_slots)
        if b:
            keys[step.decode_slots, :, step.positions[:b]] = k[:b]
            values[step.decode_slots, :, step.positions[:b]] = v[:b]
        for s in step.spans:
            keys[s.slot, :, s.pos : s.pos + s.stop - s.start] = k[s.start : s.stop].transpose(0, 1)
            values[s.slot, :, s.pos : s.pos + s.stop - s.start] = v[s.start : s.stop].transpose(
                0, 1
            )
        out = torch.empty_like(q)
        gqa = self.heads != self.kv_heads
        scale = self.scales[i]
        if b:
            width = masks.decode.shape[-1]
            if masks.all_slots:
                # Every slot in one call (no copy of the cache); idle slots attend to position 0.
                qf = q.new_zeros(cache.slots, self.heads, 1, self.head_dim)
                qf[step.decode_slots] = q[:b, :, None]
                o = F.scaled_dot_product_attention(
                    qf, keys[:, :, :width], values[:, :, :width],
                    attn_mask=masks.decode, scale=scale, enable_gqa=gqa,
                )  # fmt: skip
                out[:b] = o[step.decode_slots, :, 0]
            else:
                o = F.scaled_dot_product_attention(
                    q[:b, :, None],
                    keys[step.decode_slots, :, :width],
                    values[step.decode_slots, :, :width],
                    attn_mask=masks.decode, scale=scale, enable_gqa=gqa,
                )  # fmt: skip
                out[:b] = o[:, :, 0]
        for s, mask in zip(step.spans, masks.spans, strict=True):
            end = s.pos + s.stop - s.start
            o = F.scaled_dot_product_attention(
                q[s.start : s.stop].transpose(0, 1)[None],  # (1, Hq, n, D)
                keys[s.slot : s.slot + 1, :, :end],
                values[s.slot : s.slot + 1, :, :end],
                attn_mask=mask, scale=scale, enable_gqa=gqa,
            )  # fmt: skip
            out[s.start : s.stop] = o[0].transpose(0, 1)
        return out


@dataclass(frozen=True)
class _Masks:
    """The step's attention masks, made once and shared by every layer."""

    decode: Tensor  # (S or B, 1, 1, L) bool: True where a decode row may attend
    all_slots: bool  # decode attends over every slot (else over the decode rows' slots only)
    spans: tuple[Tensor, ...]  # per span (n, pos + n) bool, causal

    @classmethod
    def build(cls, step: Step, cache: KVCache) -> _Masks:
        device = step.ids.device
        b = len(step.decode_slots)
        all_slots = 2 * b >= cache.slots
        decode = torch.ones(0, dtype=torch.bool, device=device)
        if b:
            width = int(step.decode_lengths.max())
            if all_slots:
                lengths = torch.ones(cache.slots, dtype=torch.long, device=device)
                lengths[step.decode_slots] = step.decode_lengths
            else:
                lengths = step.decode_lengths
            decode = torch.arange(width, device=device)[None] < lengths[:, None]
            decode = decode[:, None, None, :]
        spans = []
        for s in step.spans:
            n = s.stop - s.start
            rows = torch.arange(s.pos, s.pos + n, device=device)[:, None]
            spans.append(torch.arange(s.pos + n, device=device)[None] <= rows)
        return cls(decode, all_slots, tuple(spans))
