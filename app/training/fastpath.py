"""Work the training loop need not repeat each step, found by probing the frozen base once.

1. A layer whose input is the raw data computes the same `x W^T + b` every epoch: cache it for
   every row once, and each step adds only the LoRA term on top.
2. A layer fed directly by such a cached layer (no activation between) sees `c[rows] + U V^T`,
   the cached base rows plus low-rank LoRA corrections. Its base output of `c` is cacheable too,
   and the corrections pass through its weight as `U (W V)^T`: rank-r work instead of a full
   matrix product, forward and backward. So a chain of linear layers trains at the cost of its
   LoRA terms. Whether a chain may be treated so is checked numerically before training; a
   model where it does not hold falls back to (1), or to the plain forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from app.lora import LoraModule, base_layer, lora_delta, plan_scope, wrap_layers

_PROBE_ROWS = 8


@dataclass(frozen=True)
class LowRank:
    """Rows of an activation, base + sum(U_i V_i^T), kept in pieces: (B, d)."""

    base: Tensor  # (B, d), cached base activations: no gradient
    terms: tuple[tuple[Tensor, Tensor], ...]  # U (B, r_i), V (d, r_i)

    def dense(self) -> Tensor:
        out = self.base
        for u, v in self.terms:
            out = out + u @ v.T
        return out

    def times_t(self, m: Tensor) -> Tensor:
        """self @ m^T for m (k, d), piece by piece: (B, k)."""
        out = self.base @ m.T
        for u, v in self.terms:
            out = out + u @ (m @ v).T  # (B, r_i) @ (r_i, k)
        return out


@dataclass
class TrainingPlan:
    """Which layers' base outputs are cached, and which hand their output on in pieces."""

    cache: dict[str, Tensor] = field(default_factory=dict)  # name -> (N, out) for every row
    lowrank_out: set[str] = field(default_factory=set)

    def linear(self, modules: dict[str, LoraModule], rows: Tensor | None) -> Any:
        """A LinearFn for the rows `rows` of the training data (None: no cache, plain)."""

        def apply(name: str, layer: nn.Linear, h: Any) -> Any:
            module = modules.get(name)
            cached = self.cache.get(name) if rows is not None else None
            if cached is None:
                h = h.dense() if isinstance(h, LowRank) else h
                y = layer(h)
                if module is None:
                    return y
                # A and B train in fp32 whatever the base's dtype: the term is computed in theirs
                # (the rows cast up) and added in the base's, as PEFT does (no-ops in fp32).
                return y + lora_delta(h.to(module.lora_A.dtype), module).to(y.dtype)
            # The base part of h (if any) is already inside `cached`; carry the rest through W.
            terms = [(u, layer.weight @ v) for u, v in h.terms] if isinstance(h, LowRank) else []
            if module is not None:
                ha = h.times_t(module.lora_A) if isinstance(h, LowRank) else h @ module.lora_A.T
                terms.append((ha * module.scaling, module.lora_B))  # (B, r), (out, r)
            out = LowRank(cached[rows], tuple(terms))
            return out if name in self.lowrank_out else out.dense()

        return apply


def dense(out: Any) -> Tensor:
    return out.dense() if isinstance(out, LowRank) else out


@dataclass
class _Graph:
    order: list[str]
    raw_input: set[str]  # layers fed the raw data
    parent: dict[str, str]  # layer -> the layer whose output it takes unchanged
    model_output: str | None  # the layer whose output the model returns unchanged


def _probe(model: nn.Module, x: Tensor) -> _Graph:
    graph = _Graph([], set(), {}, None)
    outputs: dict[str, Tensor] = {}

    def probe(name: str, layer: nn.Linear, h: Tensor) -> Tensor:
        graph.order.append(name)
        if h is x:
            graph.raw_input.add(name)
        for prev, y in outputs.items():
            if h is y:
                graph.parent[name] = prev
        outputs[name] = layer(h)
        return outputs[name]

    with torch.no_grad(), plan_scope(probe):
        out = model(x)
    graph.model_output = next((n for n, y in outputs.items() if y is out), None)
    return graph


def _agrees(model: nn.Module, plan: TrainingPlan, targets: list[str], x: Tensor) -> bool:
    """Does the plan compute what the plain forward computes, with random LoRA terms?"""
    gen = torch.Generator().manual_seed(0)
    modules = {}
    for name in targets:
        layer = base_layer(model, name)
        a = torch.randn(2, layer.in_features, generator=gen).to(x) / layer.in_features
        b = torch.randn(layer.out_features, 2, generator=gen).to(x)
        modules[name] = LoraModule(a, b, 1.0)
    rows = torch.arange(len(x), device=x.device)
    plain = TrainingPlan()
    try:
        with torch.no_grad():
            with plan_scope(plan.linear(modules, rows)):
                fast = dense(model(x))
            with plan_scope(plain.linear(modules, None)):
                slow = dense(model(x))
    except (TypeError, AttributeError, RuntimeError):
        return False
    scale = slow.abs().max().clamp_min(1e-6)
    return bool(((fast - slow).abs().max() / scale) < 1e-4)


def plan_training(
    model: nn.Module, x: Tensor, targets: list[str], cache_bytes: int = 2 << 30
) -> TrainingPlan:
    """Cache what can be cached within `cache_bytes`, checked against the plain forward."""
    wrap_layers(model)  # the probes reach the layers through plans, as training does
    graph = _probe(model, x[:_PROBE_ROWS])
    plan = TrainingPlan()
    used = 0
    with torch.no_grad():
        for name in graph.order:
            parent = graph.parent.get(name)
            if name in graph.raw_input:
                source = x
            elif parent is not None and parent in plan.cache:
                source = plan.cache[parent]
            else:
                continue
            layer = base_layer(model, name)
            size = len(x) * layer.out_features * x.element_size()
            if used + size > cache_bytes:
                break
            plan.cache[name] = torch.cat([layer(chunk) for chunk in source.split(4096)])
            used += size
    # A cached layer hands its output on in pieces when a layer takes it unchanged, or when it is
    # the model's output; any other use (an activation) makes the check below fail.
    feeds = set(graph.parent.values())
    plan.lowrank_out = {n for n in plan.cache if n == graph.model_output or n in feeds}
    probe = x[:_PROBE_ROWS]
    if plan.lowrank_out and not _agrees(model, _sliced(plan, len(probe)), targets, probe):
        plan.lowrank_out = set()
        plan.cache = {n: c for n, c in plan.cache.items() if n in graph.raw_input}
    if plan.cache and not _agrees(model, _sliced(plan, len(probe)), targets, probe):
        return TrainingPlan()
    return plan


def _sliced(plan: TrainingPlan, rows: int) -> TrainingPlan:
    """The plan restricted to the first `rows` rows, for checking it on the probe rows."""
    return TrainingPlan({n: c[:rows] for n, c in plan.cache.items()}, set(plan.lowrank_out))
