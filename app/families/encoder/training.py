"""Training on text pairs: in-batch negatives, as sentence-transformers' MultipleNegativesRankingLoss.

Each anchor must pick its own positive out of the batch's positives: cross-entropy over the cosine
similarities times a scale (20, as sentence-transformers). Validation ranks every validation
positive for each validation anchor, and reports that loss and recall@1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from app.families.encoder.text import TextEncoder
from app.lora import LoraAdapter, LoraModule, plan_scope
from app.model.tokens import TokenBatch
from app.training.fastpath import TrainingPlan
from app.training.trainer import StepReport, TrainConfig, fit

SCALE = 20.0
_CHUNK = 256  # texts per forward when validating


def ranking_loss(anchors: Tensor, positives: Tensor, scale: float = SCALE) -> Tensor:
    """Mean cross-entropy of each anchor (N, d) against all positives (N, d), its own the label."""
    scores = scale * F.normalize(anchors, dim=1) @ F.normalize(positives, dim=1).T  # (N, N)
    return F.cross_entropy(scores, torch.arange(len(anchors), device=anchors.device))


def recall_at_1(anchors: Tensor, positives: Tensor) -> float:
    """How often an anchor's most similar positive (cosine) is its own."""
    scores = F.normalize(anchors, dim=1) @ F.normalize(positives, dim=1).T  # (N, N)
    hits = scores.argmax(dim=1) == torch.arange(len(anchors), device=anchors.device)
    return hits.float().mean().item()


@dataclass
class TextPairs:
    """The Objective (trainer.py) of a text base: anchors and positives, tokenized once."""

    model: nn.Module
    encoder: TextEncoder
    anchors: TokenBatch
    positives: TokenBatch
    validation: tuple[TokenBatch, TokenBatch] | None

    @property
    def rows(self) -> int:
        return len(self.anchors)

    def _embed(self, modules: dict[str, LoraModule], batch: TokenBatch) -> Tensor:
        with plan_scope(TrainingPlan().linear(modules, None)):
            return self.encoder.embed(self.model, batch)  # (N, d) fp32 whatever the base's

    def loss(self, modules: dict[str, LoraModule], rows: Tensor) -> Tensor:
        anchors = self._embed(modules, self.anchors[rows])
        return ranking_loss(anchors, self._embed(modules, self.positives[rows]))

    def validate(self, modules: dict[str, LoraModule]) -> dict[str, float]:
        if self.validation is None:
            return {}
        with torch.no_grad():
            a, p = (
                torch.cat(
                    [self._embed(modules, b[i : i + _CHUNK]) for i in range(0, len(b), _CHUNK)]
                )
                for b in self.validation
            )
        return {
            "validation_loss": ranking_loss(a, p).item(),
            "validation_recall_at_1": recall_at_1(a, p),
        }


def train_text_lora(
    model: nn.Module,
    encoder: TextEncoder,
    config: TrainConfig,
    pairs: Sequence[tuple[str, str]],
    validation: Sequence[tuple[str, str]] | None = None,
    on_step: Callable[[StepReport], None] = lambda report: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> LoraAdapter:
    """Train a LoRA adapter for a frozen text `model` so that anchors find their positives."""
    device = next(model.parameters()).device

    def tokens(texts: Sequence[str]) -> TokenBatch:
        return encoder.tokenize(texts).to(device)

    def both(rows: Sequence[tuple[str, str]]) -> tuple[TokenBatch, TokenBatch]:
        return tokens([a for a, _ in rows]), tokens([p for _, p in rows])

    anchors, positives = both(pairs)
    held_out = both(validation) if validation else None

    def objective(modules: dict[str, LoraModule]) -> TextPairs:
        return TextPairs(model, encoder, anchors, positives, held_out)

    return fit(model, config, objective, on_step, should_stop)
