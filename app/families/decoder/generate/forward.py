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

from app.families.decoder.generate.cache import KVCache
from app.families.decoder.generate.fused import Fused, FusedBlock, fuse_block
from app.families.decoder.generate.layers import embed_rows, rms_norm, rotate_half
from app.families.decoder.model import CausalInfo


@dataclass(frozen=True)
class Span:
    """Prefill rows start:stop are tokens `pos`.. of a sequence whose keys are in `blocks`."""

    start: int
    stop: int
    pos: int
    blocks: Tensor  # (nb,) the sequence's blocks, as far as this span reaches
    mask: Tensor  # (G * n, nb * block_tokens) bool, causal: True where a row may attend


@dataclass(frozen=True)
class Step:
    """Where each sequence's tokens sit in one forward's rows, and where their keys go.

    Built once per step and read by every layer: the rows' positions, the flat cache row of
    each row's keys, the decode rows' block tables and masks, the prefill spans."""

    ids: Tensor  # (N,) token ids
    positions: Tensor  # (N,) each token's position in its sequence
    write: Tensor  # (N,) the cache row (block * block_tokens + offset) of each row's keys
    decode_blocks: Tensor  # (B * nb,) rows 0..B-1's block tables, padded with block 0
    decode_mask: Tensor  # (B, 1, 1, nb * block_tokens) bool: True where a decode row attends
    spans: tuple[Span, ...]

    @classmethod
    def build(
        cls,
        ids: list[int],
        positions: list[int],
        tables: list[list[int]],
        spans: list[tuple[int, int, int]],
        block_tokens: int,
        group: int,
        device: torch.device,
    ) -> Step:
        """Rows `ids` at `positions`, row r's sequence holding blocks `tables[r]`; the first
        rows decode (one each) up to the first span's start; spans are (start, stop, pos) of
        prefill rows. `group` query heads share a key head."""

        def long(values: list[int]) -> Tensor:
            return torch.tensor(values, dtype=torch.long, device=device)

        write = [
            table[p // block_tokens] * block_tokens + p % block_tokens
            for table, p in zip(tables, positions, strict=True)
        ]
        b = spans[0][0] if spans else len(ids)
        nb = max((len(tables[r]) for r in range(b)), default=0)
        padded = [tables[r] + [0] * (nb - len(tables[r])) for r in range(b)]
        lengths = long([p + 1 for p in positions[:b]])
        decode_mask = torch.arange(nb * block_tokens, device=device)[None] < lengths[:, None]
        made = []
        for start, stop, pos in spans:
            n, blocks = stop - start, tables[start][: -(-(pos + stop - start) // block_tokens)]
            rows = torch.arange(pos, pos + n, device=device).repeat(group)[:, None]
            mask = torch.arange(len(blocks) * block_tokens, device=device)[None] <= rows
            made.append(Span(start, stop, pos, long(blocks), mask))
        return cls(
            ids=long(ids),
            positions=long(positions),
            write=long(write),
            decode_blocks=long([x for t in padded for x in t]),
            decode_mask=decode_mask[:, None, None, :],
            spans=tuple(made),
        )

    @property
    def decoding(self) -> int:
        return self.decode_mask.shape[0]


class DecoderForward:
    """Runs steps on a frozen causal LM of a known layout; the caller sets the plan."""

    def __init__(self, module: Any, info: CausalInfo, pack_weights: bool = False) -> None:
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
        # GPT-2's attention is one product already (c_attn), and its MLP has no gate.
        self.fused = [
            FusedBlock(None, None)
            if self.layout == "gpt2"
            else fuse_block(b.self_attn, b.mlp, pack_weights)
            for b in self.blocks
        ]
        self.head = Fused.of([self.lm_head], pack_weights) if pack_weights else None
        self.layers = len(self.blocks)

    def new_cache(
        self,
        dtype: torch.dtype,
        device: torch.device,
        budget: int,
        block_tokens: int,
        length: int,
        prefix_caching: bool = True,
    ) -> KVCache:
        return KVCache(
            self.layers, self.kv_heads, self.head_dim, dtype, device, budget, block_tokens,
            length, prefix_caching,
        )  # fmt: skip

    @property
    def group(self) -> int:
        """Query heads per key head."""
        return self.heads // self.kv_heads

    def hidden(self, step: Step, cache: KVCache) -> Tensor:
        """(N, hidden) final hidden states of the step's rows; writes their keys and values."""
        cache.prepare()
        x = embed_rows(self.embed, step.ids)  # (N, hidden)
        if self.pos_embed is not None:
            x = x + embed_rows(self.pos_embed, step.positions)
        rope = None
        if self.rotary is not None:
            cos, sin = self.rotary(x[None], step.positions[None])  # (1, N, D) each
            rope = (cos[0, :, None], sin[0, :, None])  # (N, 1, D)
        for i, block in enumerate(self.blocks):
            if self.layout == "gpt2":
                x = x + self._gpt2_attention(i, block, block.ln_1(x), step, cache)
                x = x + block.mlp(block.ln_2(x))
            else:
                h = rms_norm(block.input_layernorm, x)
                x = x + self._llama_attention(i, block.self_attn, h, rope, step, cache)
                x = x + self._llama_mlp(i, block.mlp, rms_norm(block.post_attention_layernorm, x))
        return rms_norm(self.norm, x)

    def logits(self, hidden: Tensor) -> Tensor:
        """(M, vocab) float32 logits of some rows' hidden states."""
        if self.head is not None:
            return self.head(hidden)[0].float()
        return self.lm_head(hidden).float()

    def _llama_attention(
        self,
        i: int,
        attn: Any,
        h: Tensor,
        rope: tuple[Tensor, Tensor] | None,
        step: Step,
        cache: KVCache,
    ) -> Tensor:
        n, hq, hkv, d = h.shape[0], self.heads, self.kv_heads, self.head_dim
        fused = self.fused[i].qkv
        y = fused.joined(h) if fused is not None and not hasattr(attn, "q_norm") else None
        if y is not None:
            # q and k sit side by side in the fused product: rotated as one (N, Hq + Hkv, D).
            qk = y[:, : (hq + hkv) * d].view(n, hq + hkv, d)
            if rope is not None:
                qk = qk * rope[0] + rotate_half(qk) * rope[1]
            q, k, v = qk[:, :hq], qk[:, hq:], y[:, (hq + hkv) * d :].view(n, hkv, d)
        else:
            q, k, v = fused(h) if fused else (attn.q_proj(h), attn.k_proj(h), attn.v_proj(h))
            q, k, v = q.view(n, hq, d), k.view(n, hkv, d), v.view(n, hkv, d)
            if hasattr(attn, "q_norm"):  # Qwen3 normalizes each head before the rotation
                q, k = attn.q_norm(q), attn.k_norm(k)
            if rope is not None:
                cos, sin = rope
                q = q * cos + rotate_half(q) * sin
                k = k * cos + rotate_half(k) * sin
        out = self._attend(i, q, k, v, step, cache).reshape(n, self.heads * self.head_dim)
        o = self.fused[i].o
        return o(out)[0] if o is not None else attn.o_proj(out)

    def _llama_mlp(self, i: int, mlp: Any, h: Tensor) -> Tensor:
        fused = self.fused[i].gate_up
        if fused is None:
            return mlp(h)  # type: ignore[no-any-return]
        gate, up = fused(h)
        act = mlp.act_fn(gate) * up
        down = self.fused[i].down
        return down(act)[0] if down is not None else mlp.down_proj(act)

    def _gpt2_attention(self, i: int, block: Any, h: Tensor, step: Step, cache: KVCache) -> Tensor:
        n = h.shape[0]
        qkv = block.attn.c_attn(h)  # (N, 3 * hidden)
        q, k, v = (t.view(n, self.heads, self.head_dim) for t in qkv.chunk(3, dim=-1))
        out = self._attend(i, q, k, v, step, cache)
        return block.attn.c_proj(out.reshape(n, self.heads * self.head_dim))

    def _attend(
        self, i: int, q: Tensor, k: Tensor, v: Tensor, step: Step, cache: KVCache
    ) -> Tensor:
        """(N, Hq, D): each row attends over its own sequence's cached keys, itself included.

        The query heads that share a key head are folded into the query length ((B, Hkv, G, D)
        against (B, Hkv, L, D)): one attention over the key heads as they are stored, where
        `enable_gqa` would repeat every key head G times first."""
        keys, values = cache.k[i], cache.v[i]  # (blocks, T, Hkv, D)
        bt, hkv, d, g = cache.block_tokens, self.kv_heads, self.head_dim, self.group
        keys.view(-1, hkv, d).index_copy_(0, step.write, k)
        values.view(-1, hkv, d).index_copy_(0, step.write, v)
        scale = self.scales[i]
        b = step.decoding
        if b and not step.spans:  # decode rows alone: attention's output is the whole answer
            return self._decode_attention(q, cache, keys, values, step, scale)
        out = torch.empty_like(q)
        if b:
            out[:b] = self._decode_attention(q[:b], cache, keys, values, step, scale)
        for s in step.spans:
            n, width = s.stop - s.start, len(s.blocks) * bt
            ks = cache.gather(keys, s.blocks, 2).view(1, width, hkv, d).transpose(1, 2)
            vs = cache.gather(values, s.blocks, 3).view(1, width, hkv, d).transpose(1, 2)
            qs = (
                q[s.start : s.stop].view(n, hkv, g, d).permute(1, 2, 0, 3).reshape(1, hkv, g * n, d)
            )
            o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=s.mask, scale=scale)
            out[s.start : s.stop] = o.view(hkv, g, n, d).permute(2, 0, 1, 3).reshape(n, -1, d)
        return out

    def _decode_attention(
        self, q: Tensor, cache: KVCache, keys: Tensor, values: Tensor, step: Step, scale: float
    ) -> Tensor:
        """(B, Hq, D): the decode rows' queries `q` over their sequences' cached keys."""
        b, hkv, d, g = step.decoding, self.kv_heads, self.head_dim, self.group
        width = step.decode_mask.shape[-1]
        kd = cache.gather(keys, step.decode_blocks, 0).view(b, width, hkv, d)
        vd = cache.gather(values, step.decode_blocks, 1).view(b, width, hkv, d)
        o = F.scaled_dot_product_attention(
            q.view(b, hkv, g, d), kd.transpose(1, 2), vd.transpose(1, 2),
            attn_mask=step.decode_mask, scale=scale,
        )  # fmt: skip
        return o.view(b, self.heads, d)
