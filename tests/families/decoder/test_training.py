"""SFT on tiny decoders: the loss is the answer tokens' cross-entropy written out longhand, it
falls, and the adapter learns to give exactly the answers (greedy, batched as alone)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from app.families import load_family
from app.families.decoder.datasets import encode
from app.families.decoder.family import DecoderFamily
from app.families.decoder.training import Sft, train_sft_lora
from app.lora import LoraModule
from app.training.trainer import StepReport, TrainConfig
from support.chats import ROWS
from support.gen_helpers import write_tiny_causal_lm


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def fam(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> DecoderFamily:
    folder = tmp_path_factory.mktemp(request.param) / "tiny"
    return load_family(write_tiny_causal_lm(folder, request.param, seed=1), torch.device("cpu"))


def objective(fam: DecoderFamily) -> Sft:
    assert fam.causal is not None
    rows = [encode(fam.causal, r) for r in ROWS]
    return Sft(fam.base.module, fam.causal, rows, rows, torch.device("cpu"))


def test_the_loss_is_the_answer_tokens_cross_entropy(fam: DecoderFamily) -> None:
    sft = objective(fam)
    name = next(iter(fam.base.targets))
    layer = fam.base.targets[name]
    gen = torch.Generator().manual_seed(0)
    module = LoraModule(
        torch.randn(2, layer.in_features, generator=gen) * 0.1,
        torch.randn(layer.out_features, 2, generator=gen) * 0.1,
        1.5,
    )
    got = sft.loss({name: module}, torch.tensor([0, 3]))
    # Longhand: each row alone through PEFT-free transformers with the delta patched into W.
    with torch.no_grad():
        original = layer.weight.clone()
        layer.weight += 1.5 * module.lora_B @ module.lora_A
        try:
            losses, count = 0.0, 0
            for i in (0, 3):
                row = sft.train[i]
                logits = fam.base.module(input_ids=torch.tensor([row.ids])).logits[0, :-1]
                mask = torch.tensor(row.trained[1:])
                target = torch.tensor(row.ids[1:])[mask]
                losses += F.cross_entropy(logits[mask], target, reduction="sum").item()
                count += len(target)
        finally:
            layer.weight.copy_(original)
    assert got.item() == pytest.approx(losses / count, rel=1e-5)


def test_training_learns_the_answers_exactly(fam: DecoderFamily) -> None:
    assert fam.causal is not None
    targets = tuple(fam.base.linears())
    config = TrainConfig(rank=8, alpha=16, target_modules=targets, epochs=30, batch_size=4,
                         learning_rate=2e-2, loss="sft", seed=1)  # fmt: skip
    reports: list[StepReport] = []
    adapter = train_sft_lora(fam.base.module, fam.causal, config, ROWS, ROWS, reports.append)
    epochs = [r for r in reports if r.epoch_end]
    assert epochs[0].validation_exact_match == 0.0
    assert epochs[-1].validation_exact_match == 1.0
    assert epochs[-1].validation_loss is not None and epochs[0].validation_loss is not None
    assert epochs[-1].validation_loss < epochs[0].validation_loss / 10
    # Batched, left-padded greedy answers are the answers of each row alone.
    sft = objective(fam)
    together = sft.answers(adapter.modules, sft.validation or [])
    alone = [sft.answers(adapter.modules, [row])[0] for row in sft.validation or []]
    assert together == alone == ["Paris", "lazy dog", "today", " low rank"]
