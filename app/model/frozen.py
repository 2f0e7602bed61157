"""Which layers of a base no adapter may target."""

from __future__ import annotations

# Layers an adapter may not touch: the embeddings and the output head (tied or not) change
# the vocabulary's geometry, which the service shares between every adapter.
FROZEN_MODULES = ("lm_head", "embed_tokens", "wte", "wpe")
FROZEN_WHY = (
    "adapters may not change the embeddings or the output head of a causal_lm base "
    "(they are shared by every adapter)"
)


def frozen_module(name: str) -> bool:
    """Whether `name` is a layer adapters may not target (embeddings, output head)."""
    return name.rsplit(".", 1)[-1] in FROZEN_MODULES
