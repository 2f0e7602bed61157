"""Targeted layers are wrapped once; each forward brings its own plan for what they add.

`wrap_layers` replaces a model's linear layers by `LoraLayer`s at load. On every call a
`LoraLayer` asks the plan of the current forward (a `LinearFn`: base only, LoRA on the fly, a
stacked batch, merged weights, a training plan) to compute its output. The plan is held in a
`ContextVar` that `plan_scope` sets around one forward, so it belongs to the calling thread (or
asyncio task) and never to the model: forwards running at once on one model, in any threads,
cannot see each other's adapters. (PEFT keeps the active adapter on the layers themselves,
which is why its mixed batches are not safe across threads.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from torch import Tensor, nn

# How one forward applies a named linear layer: (name, base layer, rows (N, in)) -> (N, out).
LinearFn = Callable[[str, nn.Linear, Tensor], Tensor]

_PLAN: ContextVar[LinearFn | None] = ContextVar("lora_plan", default=None)


class DeltaPlan:
    """A plan that is the base layer plus a LoRA term added in place: `add(name, x, y)` adds
    layer `name`'s term for rows `x` into `y`. Being only a term, it can also be added into a
    slice of a product that fuses several base layers (q, k and v as one matrix product), where
    a plan that replaces the whole layer (merged weights) cannot."""

    def __init__(
        self,
        add: Callable[[str, Tensor, Tensor], None],
        add_joined: Callable[[tuple[str, ...], tuple[slice, ...], Tensor, Tensor], None]
        | None = None,
    ) -> None:
        self.add = add
        self._joined = add_joined

    def add_joined(
        self, names: tuple[str, ...], slices: tuple[slice, ...], x: Tensor, y: Tensor
    ) -> None:
        """Add the terms of layers that read the same rows `x` into their column `slices` of
        `y` (one fused product's output): in one go where the plan can (a mixed batch stacks
        the layers' A matrices side by side), else layer by layer."""
        if self._joined is not None:
            self._joined(names, slices, x, y)
            return
        for name, cols in zip(names, slices, strict=True):
            self.add(name, x, y[:, cols])

    def __call__(self, name: str, layer: nn.Linear, x: Tensor) -> Tensor:
        y = layer(x)  # this call's own output: the term goes in place
        self.add(name, x, y)
        return y


def current_plan() -> LinearFn | None:
    """The plan of the forward running in this thread or task (None: the base alone)."""
    return _PLAN.get()


class LoraLayer(nn.Module):
    """One targeted layer: the frozen base layer, applied through the current plan."""

    def __init__(self, name: str, base_layer: nn.Linear) -> None:
        super().__init__()
        self.name = name
        self.base_layer = base_layer

    def forward(self, x: Tensor) -> Tensor:
        plan = _PLAN.get()
        if plan is None:
            return self.base_layer(x)
        if isinstance(x, Tensor) and x.dim() > 2:
            # A sequence model's (batch, tokens, in): the plans work on rows, and each token is a
            # row (the caller's plan names an adapter per token, i.e. its sequence's adapter).
            y = plan(self.name, self.base_layer, x.reshape(-1, x.shape[-1]))
            return y.view(*x.shape[:-1], y.shape[-1])
        return plan(self.name, self.base_layer, x)

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


def wrap_layers(model: nn.Module) -> dict[str, nn.Linear]:
    """Wrap every nn.Linear of `model` in place; the targetable layers by name, in model order.

    The names are those of the unwrapped model, as PEFT and adapter files use them. Wrapping
    twice changes nothing.
    """
    modules = list(model.named_modules())
    wrapped = {id(m.base_layer) for _, m in modules if isinstance(m, LoraLayer)}
    targets: dict[str, nn.Linear] = {}
    for name, module in modules:
        if isinstance(module, LoraLayer):
            targets[name] = module.base_layer
        elif isinstance(module, nn.Linear) and id(module) not in wrapped:
            parent_name, _, child = name.rpartition(".")
            model.get_submodule(parent_name).register_module(child, LoraLayer(name, module))
            targets[name] = module
    return targets


def base_layer(model: nn.Module, name: str) -> nn.Linear:
    """The frozen linear layer at `name`, wrapped or not."""
    module = model.get_submodule(name)
    if isinstance(module, LoraLayer):
        module = module.base_layer
    if not isinstance(module, nn.Linear):
        raise TypeError(f"{name!r} is a {type(module).__name__}, not a linear layer")
    return module


@contextmanager
def plan_scope(plan: LinearFn | None) -> Iterator[None]:
    """Forwards inside this block apply `plan` at every wrapped layer (None: the base alone)."""
    token = _PLAN.set(plan)
    try:
        yield
    finally:
        _PLAN.reset(token)


def by_row_count(plans: dict[int, Callable[[], LinearFn]]) -> LinearFn:
    """A plan that picks, per layer call, the plan made for that many rows (each made once).

    A sequence model's layers see one row per token, but some see one row per sequence (BERT's
    pooler takes each sequence's first token): a plan that maps rows to adapters needs both.
    """
    made: dict[int, LinearFn] = {}

    def apply(name: str, layer: nn.Linear, x: Tensor) -> Tensor:
        rows = x.shape[0]
        if rows not in made:
            if rows not in plans:
                raise RuntimeError(f"layer {name!r} got {rows} rows; the plan has {list(plans)}")
            made[rows] = plans[rows]()
        return made[rows](name, layer, x)

    return apply
