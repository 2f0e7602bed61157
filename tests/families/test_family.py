"""Each family answers what the shared code asks of it: which folder is its own, the task it
serves, where a request for another task is sent, and what /v1/model reports."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from app.errors import InvalidInput
from app.families import detect, load_family
from app.families.decoder.family import DecoderFamily
from app.families.encoder.family import EncoderFamily
from app.families.mlp.family import MlpFamily
from support.gen_helpers import write_tiny_causal_lm
from support.helpers import write_base_model, write_tiny_text_model

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {
        "mlp": write_base_model(root / "mlp", [16, 8, 4]),
        "hf": write_tiny_text_model(root / "hf"),
        "causal_lm": write_tiny_causal_lm(root / "causal", "llama", seed=1),
    }


def test_each_folder_is_claimed_by_its_own_family_alone(folders: dict[str, Path]) -> None:
    expected = {"mlp": MlpFamily, "hf": EncoderFamily, "causal_lm": DecoderFamily}
    for name, folder in folders.items():
        assert detect(folder) is expected[name]
        assert [f.claims(folder) for f in expected.values()].count(True) == 1
        family = load_family(folder, CPU)
        assert type(family) is expected[name] and family.base.family == family.name == name


@pytest.mark.parametrize(
    ("name", "task", "sent_to"),
    [
        ("mlp", "embedding", "use POST /v1/predict"),
        ("hf", "regression", "use POST /v1/embeddings"),
        ("causal_lm", "embedding", "use POST /v1/chat/completions or POST /v1/completions"),
    ],
)
def test_a_request_for_another_task_is_sent_to_the_familys_endpoint(
    folders: dict[str, Path], name: str, task, sent_to: str
) -> None:
    family = load_family(folders[name], CPU)
    family.require(family.task, "input")  # its own task passes
    with pytest.raises(InvalidInput) as refused:
        family.require(task, "input")
    assert refused.value.message.endswith(sent_to) and refused.value.param == "input"


def test_facts_are_each_familys_own(folders: dict[str, Path]) -> None:
    mlp, hf, causal = (load_family(folders[n], CPU) for n in ("mlp", "hf", "causal_lm"))
    assert mlp.facts.max_seq_length is None and mlp.facts.context_length is None
    assert hf.facts.max_seq_length == hf.text.max_seq_length  # type: ignore[attr-defined]
    assert hf.facts.context_length is None
    assert causal.facts.context_length == causal.causal.context_length  # type: ignore[attr-defined]
    assert causal.facts.chat_template is True
    assert causal.base.frozen and not mlp.base.frozen and not hf.base.frozen
