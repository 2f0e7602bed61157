"""Supervised fine-tuning of a decoder: next-token cross-entropy on the answer tokens only.

A batch is right-padded, so no attention mask is needed: in a causal model a padding token
comes after every real one and no real token attends to it. Only the hidden states of positions
that predict an answer token go through the output head, which keeps the (tokens, vocabulary)
logits of a batch small. Validation reports the same loss and, on the last answer of each row,
the rate at which greedy generation with the adapter gives exactly the reference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from app.families.decoder.datasets import Encoded, encode
from app.families.decoder.model import CausalInfo
from app.lora import LoraAdapter, LoraModule, plan_scope
from app.training.fastpath import TrainingPlan
from app.training.jsonl import Row
from app.training.trainer import StepReport, TrainConfig, fit

_CHUNK = 16  # rows per forward when validating
_EXTRA_TOKENS = 4  # generated past the reference's length, to see whether the answer ends


def _padded(rows: Sequence[Encoded], pad: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Ids (B, T) right-padded, and the mask (B, T-1) of positions whose next token is trained."""
    width = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    trained = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r.ids)] = torch.tensor(r.ids)
        trained[i, : len(r.ids)] = torch.tensor(r.trained)
    return ids.to(device), trained[:, 1:].to(device)


@dataclass
class Sft:
    """The Objective (trainer.py) of a decoder base: answer-token cross-entropy."""

    model: nn.Module
    info: CausalInfo
    train: list[Encoded]
    validation: list[Encoded] | None
    device: torch.device

    @property
    def rows(self) -> int:
        return len(self.train)

    @property
    def _pad(self) -> int:
        return min(self.info.eos_token_ids) if self.info.eos_token_ids else 0

    def _loss_sum(
        self, modules: dict[str, LoraModule], rows: Sequence[Encoded]
    ) -> tuple[Tensor, int]:
        """The summed loss over the rows' answer tokens, and how many there are."""
        ids, trained = _padded(rows, self._pad, self.device)
        with plan_scope(TrainingPlan().linear(modules, None)):
            backbone = cast(nn.Module, self.model.base_model)  # the model without its head
            hidden = backbone(input_ids=ids, use_cache=False).last_hidden_state
            head = cast(nn.Module, cast(Any, self.model).get_output_embeddings())
            logits = head(hidden[:, :-1][trained])  # (K, vocab): only answer positions
        targets = ids[:, 1:][trained]  # (K,)
        return F.cross_entropy(logits.float(), targets, reduction="sum"), len(targets)

    def loss(self, modules: dict[str, LoraModule], rows: Tensor) -> Tensor:
        total, count = self._loss_sum(modules, [self.train[i] for i in rows.tolist()])
        return total / max(count, 1)

    def validate(self, modules: dict[str, LoraModule]) -> dict[str, float]:
        if not self.validation:
            return {}
        total, count = 0.0, 0
        with torch.no_grad():
            for start in range(0, len(self.validation), _CHUNK):
                part, n = self._loss_sum(modules, self.validation[start : start + _CHUNK])
                total, count = total + part.item(), count + n
        hits = sum(
            got.strip() == row.reference.strip()
            for row, got in zip(
                self.validation, self.answers(modules, self.validation), strict=True
            )
        )
        return {
            "validation_loss": total / max(count, 1),
            "validation_exact_match": hits / len(self.validation),
        }

    def answers(self, modules: dict[str, LoraModule], rows: Sequence[Encoded]) -> list[str]:
        """Greedy answers to each row's last prompt with the adapter, in the rows' order."""
        tokenizer = self.info.tokenizer
        order = sorted(range(len(rows)), key=lambda i: len(rows[i].prompt))
        out: dict[int, str] = {}
        for start in range(0, len(order), _CHUNK):
            chunk = order[start : start + _CHUNK]
            new = max(len(tokenizer(rows[i].reference, add_special_tokens=False)["input_ids"])
                      for i in chunk) + _EXTRA_TOKENS  # fmt: skip
            for i, ids in zip(
                chunk, self._greedy(modules, [rows[i].prompt for i in chunk], new), strict=True
            ):
                out[i] = tokenizer.decode(ids, skip_special_tokens=True)
        return [out[i] for i in range(len(rows))]

    def _greedy(
        self, modules: dict[str, LoraModule], prompts: list[list[int]], new: int
    ) -> list[list[int]]:
        """Greedy continuations of left-padded prompts, each cut at its first end token."""
        width = max(map(len, prompts))
        ids = torch.full((len(prompts), width), self._pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :], mask[i, width - len(p) :] = torch.tensor(p), 1
        eos = sorted(self.info.eos_token_ids)
        settings: dict[str, Any] = {"do_sample": False, "max_new_tokens": new,
                                    "pad_token_id": self._pad, "eos_token_id": eos or None,
                                    "temperature": None, "top_p": None, "top_k": None}  # fmt: skip
        with torch.no_grad(), plan_scope(TrainingPlan().linear(modules, None)):
            out = (
                cast(Any, self.model)
                .generate(
                    input_ids=ids.to(self.device), attention_mask=mask.to(self.device), **settings
                )[:, width:]
                .tolist()
            )
        cut = []
        for row in out:
            ends = [j for j, t in enumerate(row) if t in self.info.eos_token_ids]
            cut.append(row[: ends[0]] if ends else row)
        return cut


def train_sft_lora(
    model: nn.Module,
    info: CausalInfo,
    config: TrainConfig,
    rows: Sequence[Row],
    validation: Sequence[Row] | None = None,
    on_step: Callable[[StepReport], None] = lambda report: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> LoraAdapter:
    """Train a LoRA adapter for a frozen decoder so that it gives the rows' answers."""
    device = next(model.parameters()).device
    train = [encode(info, r) for r in rows]
    held_out = [encode(info, r) for r in validation] if validation else None

    def objective(modules: dict[str, LoraModule]) -> Sft:
        return Sft(model, info, train, held_out, device)

    return fit(model, config, objective, on_step, should_stop)
