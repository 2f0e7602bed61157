"""Contrastive training on a tiny text base: the loss as sentence-transformers' in-batch
negatives, written out longhand; the adapter it makes is a true LoRA of the frozen base."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from app.families import load_family
from app.families.encoder.training import SCALE, ranking_loss, recall_at_1, train_text_lora
from app.training.trainer import Cancelled, StepReport, TrainConfig
from support.helpers import write_tiny_text_model

PAIRS = [(f"code {w}", f"the word {w}") for w in
         ["apple", "river", "stone", "cloud", "piano", "tiger", "lemon", "glass"]]  # fmt: skip
QV = ("encoder.layer.0.attention.self.query", "encoder.layer.0.attention.self.value",
      "encoder.layer.1.attention.self.query", "encoder.layer.1.attention.self.value")  # fmt: skip


@pytest.fixture(scope="module")
def fam(tmp_path_factory: pytest.TempPathFactory):
    folder = write_tiny_text_model(tmp_path_factory.mktemp("tiny-bert"))
    return load_family(folder, torch.device("cpu"))


def config(**kw) -> TrainConfig:
    values = dict(rank=4, alpha=8.0, target_modules=QV, epochs=3, batch_size=8,
                  learning_rate=1e-2, loss="contrastive", seed=0)  # fmt: skip
    return TrainConfig(**{**values, **kw})  # type: ignore[arg-type]


def embed(fam, texts: list[str], model=None) -> torch.Tensor:
    with torch.no_grad():
        return fam.text.embed(model or fam.base.module, fam.text.tokenize(texts))


def test_ranking_loss_is_in_batch_negatives_written_out() -> None:
    torch.manual_seed(0)
    a, p = torch.randn(5, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64)
    total = 0.0
    for i in range(5):
        cos = [float(a[i] @ p[j] / (a[i].norm() * p[j].norm())) for j in range(5)]
        total -= SCALE * cos[i] - math.log(sum(math.exp(SCALE * c) for c in cos))
    assert ranking_loss(a, p).item() == pytest.approx(total / 5, rel=1e-12)


def test_recall_at_1_counts_anchors_whose_nearest_positive_is_their_own() -> None:
    p = torch.eye(4)
    assert recall_at_1(p * 3, p) == 1.0
    assert recall_at_1(p[[1, 0, 2, 3]], p) == 0.5  # rows 0 and 1 swapped


def test_training_reports_recall_and_learns_the_pairs(fam) -> None:
    before = {k: v.clone() for k, v in fam.base.module.state_dict().items()}
    reports: list[StepReport] = []
    adapter = train_text_lora(
        fam.base.module, fam.text, config(epochs=25), PAIRS, PAIRS, reports.append
    )
    ends = [r for r in reports if r.epoch_end]
    assert len(ends) == 25 and all(r.validation_recall_at_1 is not None for r in ends)
    assert ends[-1].validation_loss < ends[0].validation_loss / 2
    assert ends[-1].validation_recall_at_1 == 1.0
    assert sorted(adapter.modules) == sorted(QV)
    assert all(torch.equal(before[k], v) for k, v in fam.base.module.state_dict().items())


def test_the_first_step_sees_the_base_model_alone(fam) -> None:
    """B starts at zero, so the first loss is the base embeddings' loss (the batch is all rows,
    in some order; the loss does not depend on the order)."""
    reports: list[StepReport] = []
    train_text_lora(fam.base.module, fam.text, config(epochs=1), PAIRS, None, reports.append)
    anchors = embed(fam, [a for a, _ in PAIRS])
    positives = embed(fam, [p for _, p in PAIRS])
    assert reports[0].train_loss == pytest.approx(ranking_loss(anchors, positives).item(), abs=1e-5)
    assert reports[-1].validation_loss is None and reports[-1].validation_recall_at_1 is None


def test_the_adapter_is_a_true_lora_of_the_base(fam) -> None:
    """Merged by hand into a copy (W + s B A), the copy embeds as the validation did."""
    reports: list[StepReport] = []
    adapter = train_text_lora(
        fam.base.module, fam.text, config(epochs=2), PAIRS, PAIRS, reports.append
    )
    merged = copy.deepcopy(fam.base.module)
    for name, module in adapter.modules.items():
        layer = merged.get_submodule(name)
        weight = layer.base_layer.weight
        weight.data += module.scaling * module.lora_B @ module.lora_A
    anchors = embed(fam, [a for a, _ in PAIRS], merged)
    positives = embed(fam, [p for _, p in PAIRS], merged)
    assert ranking_loss(anchors, positives).item() == pytest.approx(
        reports[-1].validation_loss, abs=1e-5
    )


def test_cancel_stops_before_the_next_step(fam) -> None:
    steps: list[StepReport] = []
    with pytest.raises(Cancelled):
        train_text_lora(
            fam.base.module, fam.text, config(batch_size=2), PAIRS, None, steps.append,
            should_stop=lambda: len(steps) >= 3,
        )  # fmt: skip
    assert len(steps) == 3


def test_the_adapter_is_made_on_the_models_device(fam) -> None:
    """Token ids go where the model is; a CPU model trains from CPU token batches."""
    adapter = train_text_lora(fam.base.module, fam.text, config(epochs=1), PAIRS[:2])
    assert all(m.lora_A.device.type == "cpu" for m in adapter.modules.values())
