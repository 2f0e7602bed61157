"""Hyperparameters, one type from the wire to the worker.

`Hyperparameters` is what a caller may set (every field has a default); `resolve` fills in what
depends on the base's family, giving the `TrainConfig` that is stored with the job, reported
back (app.api.schemas.ResolvedHyperparameters derives from it) and trained with.
"""

from __future__ import annotations

from typing import Literal, Protocol, cast

from pydantic import BaseModel, ConfigDict, Field

from app.errors import InvalidInput, shorten
from app.model import BaseModel as Base

Loss = Literal["mse", "cross_entropy", "contrastive", "sft"]


class Defaults(Protocol):
    """What resolving asks of the base's family (app.training.family.Trainable is one)."""

    @property
    def base(self) -> Base: ...

    @property
    def losses(self) -> tuple[str, ...]:
        """The losses it trains with, its default first."""
        ...

    @property
    def trains_on(self) -> str:
        """What its datasets hold, in words."""
        ...

    def default_targets(self) -> tuple[str, ...] | None: ...


class TrainConfig(BaseModel):
    """Resolved hyperparameters of one training run."""

    model_config = ConfigDict(frozen=True)

    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    epochs: int
    batch_size: int
    learning_rate: float
    use_rslora: bool = False
    loss: Loss = "mse"
    seed: int = 0


class Hyperparameters(BaseModel):
    """What the caller may set; everything has a default."""

    # Strict: wrong types are a 422, never coerced ("false" is not a bool); an int is a float.
    model_config = ConfigDict(extra="forbid", strict=True)

    rank: int = Field(default=8, ge=1)
    alpha: float | None = Field(
        default=None, gt=0, allow_inf_nan=False, description="default: rank"
    )
    target_modules: list[str] | None = Field(
        default=None,
        description="default: PEFT's for the model type (q_proj and v_proj for Llama, Qwen2 and "
        "Mistral; c_attn for GPT-2; query and value for BERT), else every linear layer",
    )
    epochs: int = Field(default=3, ge=1, le=100_000)
    batch_size: int = Field(default=128, ge=1, le=1_000_000)
    learning_rate: float = Field(default=1e-3, gt=0, allow_inf_nan=False)
    use_rslora: bool = False
    loss: Loss | None = Field(
        default=None,
        description="default: mse on a vector base; contrastive (in-batch negatives) on a text "
        "base; sft (cross-entropy on the answer tokens) on a decoder base",
    )
    seed: int = Field(default=0, ge=0, le=2**63 - 1)

    def resolve(self, family: Defaults, max_rank: int) -> TrainConfig:
        """The defaults that depend on the base filled in; a 422 for what does not fit it."""
        if self.rank > max_rank:
            raise InvalidInput(
                f"rank {shorten(str(self.rank))} is over the limit of {max_rank}",
                "hyperparameters.rank",
            )
        return TrainConfig(
            rank=self.rank,
            alpha=float(self.alpha if self.alpha is not None else self.rank),
            target_modules=tuple(resolve_targets(family, self.target_modules)),
            epochs=self.epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            use_rslora=self.use_rslora,
            loss=check_loss(family, self.loss),
            seed=self.seed,
        )


def _matches(layer: str, name: str) -> bool:
    """PEFT's rule: a target is a whole module name, or its last dotted parts."""
    return layer == name or layer.endswith("." + name)


def resolve_targets(family: Defaults, requested: list[str] | None) -> list[str]:
    """Full module names, in model order, for the names a job gave (or the defaults)."""
    linears = list(family.base.linears())
    if not requested:
        defaults = family.default_targets()
        requested = list(defaults) if defaults else linears
    unknown = [t for t in requested if not any(_matches(layer, t) for layer in linears)]
    if unknown:
        raise InvalidInput(
            f"target_modules {shorten(unknown)} match no linear layer; the base has "
            f"{shorten(linears, 400)}",
            "hyperparameters.target_modules",
        )
    return [layer for layer in linears if any(_matches(layer, t) for t in requested)]


def check_loss(family: Defaults, loss: str | None) -> Loss:
    """The default loss of the base's inputs, or the one asked for if it fits them."""
    allowed, kind = family.losses, family.trains_on
    if loss is None:
        return cast(Loss, allowed[0])
    if loss not in allowed:
        raise InvalidInput(
            f"loss {loss!r} does not fit a base that trains on {kind}; use one of {list(allowed)}",
            "hyperparameters.loss",
        )
    return cast(Loss, loss)
