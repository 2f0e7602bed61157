"""The LoRA training loop: Adam on A and B only, over a frozen base that is shared, not copied.

Reads top to bottom: fresh modules (B = 0), a plan of what need not be recomputed each step
(fastpath.py), then epochs of shuffled mini-batches, each step checking for cancellation and
divergence, validation after each epoch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from app.lora import (
    LoraAdapter,
    LoraConfig,
    LoraModule,
    init_lora_module,
    plan_scope,
    wrap_layers,
)
from app.training.fastpath import TrainingPlan, dense, plan_training
from app.training.hyperparameters import TrainConfig


@dataclass(frozen=True)
class StepReport:
    """Where training is, for progress and events."""

    epoch: int
    step: int
    total_steps: int
    train_loss: float  # the last step's loss, or the epoch mean at an epoch's end
    validation_loss: float | None = None
    validation_recall_at_1: float | None = None  # text pairs only
    validation_exact_match: float | None = None  # decoders only: greedy answer == reference
    epoch_end: bool = False


class Diverged(RuntimeError):
    """The loss became NaN or inf."""


class Cancelled(RuntimeError):
    """should_stop() answered True."""


def _loss_fn(kind: str) -> Callable[..., Tensor]:
    """Mean squared error, or cross-entropy against class probabilities (N, classes)."""
    return F.mse_loss if kind == "mse" else F.cross_entropy


class Objective(Protocol):
    """What one kind of training data needs from the loop: a loss on some rows, and validation."""

    @property
    def rows(self) -> int:
        """How many training rows there are."""
        ...

    def loss(self, modules: dict[str, LoraModule], rows: Tensor) -> Tensor:
        """The mean loss over `rows` (indices into the training data) with the adapter applied."""
        ...

    def validate(self, modules: dict[str, LoraModule]) -> dict[str, float]:
        """`validation_loss` and any other metric StepReport has; {} without validation data."""
        ...


def train_lora(
    model: nn.Module,
    config: TrainConfig,
    x: Tensor,
    y: Tensor,
    validation: tuple[Tensor, Tensor] | None = None,
    on_step: Callable[[StepReport], None] = lambda report: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> LoraAdapter:
    """Train a LoRA adapter for `model` (frozen, never written) on inputs x and targets y."""

    def objective(modules: dict[str, LoraModule]) -> Objective:
        return Regression(
            model, x, y, validation, config.loss, plan_training(model, x, list(modules))
        )

    return fit(model, config, objective, on_step, should_stop)


def fit(
    model: nn.Module,
    config: TrainConfig,
    make_objective: Callable[[dict[str, LoraModule]], Objective],
    on_step: Callable[[StepReport], None] = lambda report: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> LoraAdapter:
    """The loop every family shares: fresh modules, Adam over shuffled mini-batches, validation."""
    # The adapter reaches the layers through the plan of each forward; a model loaded by the
    # service is wrapped already, and wrapping is idempotent and changes no output.
    targets = wrap_layers(model)
    gen = torch.Generator().manual_seed(config.seed)
    lora_config = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        target_modules=config.target_modules,
        use_rslora=config.use_rslora,
    )
    device = next(iter(targets.values())).weight.device
    modules: dict[str, LoraModule] = {}
    params: list[Tensor] = []
    for name in config.target_modules:
        layer = targets[name]
        fresh = init_lora_module(
            layer.in_features, layer.out_features, config.rank, lora_config.scaling_for(name), gen
        )
        a = fresh.lora_A.to(device).requires_grad_(True)  # (r, in)
        b = fresh.lora_B.to(device).requires_grad_(True)  # (out, r)
        modules[name] = LoraModule(a, b, fresh.scaling)
        params += [a, b]
    optimizer = torch.optim.Adam(params, lr=config.learning_rate)
    objective = make_objective(modules)
    n = objective.rows
    steps_per_epoch = math.ceil(n / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    step = 0
    for epoch in range(1, config.epochs + 1):
        order = torch.randperm(n, generator=gen).to(device)
        epoch_loss = 0.0
        for start in range(0, n, config.batch_size):
            if should_stop():
                raise Cancelled()
            rows = order[start : start + config.batch_size]  # (B,)
            loss = objective.loss(modules, rows)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = loss.item()
            if not math.isfinite(value):
                raise Diverged(
                    f"the training loss became {value} at epoch {epoch}, step {step + 1}"
                )
            step += 1
            epoch_loss += value * len(rows)
            on_step(StepReport(epoch, step, total_steps, value))
        metrics = objective.validate(modules)
        val_loss = metrics.get("validation_loss")
        if val_loss is not None and not math.isfinite(val_loss):
            raise Diverged(f"the validation loss became {val_loss} at epoch {epoch}")
        on_step(StepReport(epoch, step, total_steps, epoch_loss / n, **metrics, epoch_end=True))
    frozen = {
        n: LoraModule(m.lora_A.detach(), m.lora_B.detach(), m.scaling) for n, m in modules.items()
    }
    return LoraAdapter(lora_config, frozen)


@dataclass
class Regression:
    """Vectors in, targets out: mse or cross-entropy, through the cached plan (fastpath.py)."""

    model: nn.Module
    x: Tensor
    y: Tensor
    validation: tuple[Tensor, Tensor] | None
    kind: str
    plan: TrainingPlan

    @property
    def rows(self) -> int:
        return len(self.x)

    def loss(self, modules: dict[str, LoraModule], rows: Tensor) -> Tensor:
        with plan_scope(self.plan.linear(modules, rows)):
            out = dense(self.model(self.x[rows]))
        return _loss_fn(self.kind)(out, self.y[rows])

    def validate(self, modules: dict[str, LoraModule]) -> dict[str, float]:
        if self.validation is None:
            return {}
        return {"validation_loss": evaluate(self.model, modules, *self.validation, self.kind)}


def evaluate(
    model: nn.Module, modules: dict[str, LoraModule], x: Tensor, y: Tensor, loss: str = "mse"
) -> float:
    """Mean loss over (x, y) with the adapter applied, in chunks."""
    loss_fn = _loss_fn(loss)
    wrap_layers(model)
    total = 0.0
    with torch.no_grad():
        for xs, ys in zip(x.split(4096), y.split(4096), strict=True):
            with plan_scope(TrainingPlan().linear(modules, None)):
                out = model(xs)
            total += loss_fn(out, ys, reduction="sum").item()
    elements = y.numel() if loss == "mse" else len(y)
    return total / elements


def total_steps(rows: int, batch_size: int, epochs: int) -> int:
    return math.ceil(rows / batch_size) * epochs
