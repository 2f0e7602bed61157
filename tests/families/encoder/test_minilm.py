"""The real all-MiniLM-L6-v2: base embeddings as sentence-transformers makes them, and PEFT's
own adapters giving PEFT's own outputs through our engine, alone, mixed, merged and back."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, BertForSequenceClassification

from app.adapters import BaseInfo
from app.engine import Predictor
from app.errors import InvalidAdapter
from app.families import load_family
from app.families.encoder.family import EncoderFamily
from app.families.encoder.model import known_model_folder
from support.helpers import RegistryByName

TEXTS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome and everyone should see it twice.",
    "Cats",
    "The quick brown fox jumps over the lazy dog near the river bank on a sunny afternoon.",
    "Stock markets fell sharply on Monday.",
]
# Configs as PEFT users write them: several ranks, alpha != r, rslora, rank and alpha patterns,
# attention and feed-forward targets.
CONFIGS = {
    "qv4": {"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"]},
    "all8": {
        "r": 8,
        "lora_alpha": 4,
        "target_modules": ["query", "key", "value", "dense"],
        "use_rslora": True,
    },
    "patterned": {
        "r": 2,
        "lora_alpha": 16,
        "target_modules": ["query", "value"],
        "rank_pattern": {"encoder.layer.0.attention.self.query": 6},
        "alpha_pattern": {"encoder.layer.5.attention.self.value": 3},
    },
}


@pytest.fixture(scope="module")
def folder() -> Path:
    path = known_model_folder("all-MiniLM-L6-v2")
    assert path is not None
    return path


@pytest.fixture(scope="module")
def fam() -> EncoderFamily:
    return load_family(Path("all-MiniLM-L6-v2"), torch.device("cpu"))


@pytest.fixture(scope="module")
def peft_models(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each config's adapter, made and saved by PEFT on a fresh MiniLM (B random, not zero)."""
    saved = {}
    for i, (name, config) in enumerate(CONFIGS.items()):
        torch.manual_seed(i)
        model = AutoModel.from_pretrained(folder, local_files_only=True)
        peft = get_peft_model(model, LoraConfig(init_lora_weights=False, **config))  # type: ignore[arg-type]
        saved[name] = tmp_path_factory.mktemp(name)
        peft.save_pretrained(saved[name])
    return saved


@pytest.fixture(scope="module")
def predictor(fam: EncoderFamily, peft_models: dict[str, Path], tmp_path_factory) -> Predictor:
    linears = {n: (i.in_features, i.out_features) for n, i in fam.base.linears().items()}
    info = BaseInfo(linears, fam.base.name, fam.base.fingerprint, fam.base.device, fam.base.dtype)
    registry = RegistryByName.local(tmp_path_factory.mktemp("store"), info, 64, 1 << 30)
    for name, path in peft_models.items():
        registry.upload(
            name,
            (path / "adapter_config.json").read_bytes(),
            (path / "adapter_model.safetensors").read_bytes(),
        )
    return Predictor(fam.base, registry, 1 << 30)


def peft_reference(folder: Path, adapter: Path | None, fam: EncoderFamily, texts: list[str]):
    """PEFT's own forward on each text alone, pooled as the model's sentence-transformers config."""
    assert fam.text is not None
    model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter).eval()
    with torch.no_grad():
        return torch.cat([fam.text.embed(model, fam.text.tokenize([t])) for t in texts])


def test_base_embeddings_are_sentence_transformers_own(fam: EncoderFamily, folder: Path) -> None:
    assert fam.text is not None and fam.base.family == "hf" and fam.base.output_dim == 384
    assert fam.text.max_seq_length == 256 and fam.text.pooling == "mean" and fam.text.normalize
    expected = SentenceTransformer(str(folder), device="cpu").encode(TEXTS, convert_to_tensor=True)
    with torch.no_grad():
        ours = fam.base.run(fam.text.tokenize(TEXTS))
    cosine = torch.nn.functional.cosine_similarity(ours, expected.cpu())
    assert float(cosine.min()) >= 0.99999
    assert float(ours[0] @ ours[1]) == pytest.approx(0.755, abs=0.005)


def test_targets_are_named_as_peft_names_them(fam: EncoderFamily) -> None:
    names = list(fam.base.linears())
    assert "encoder.layer.0.attention.self.query" in names
    assert names[:6] == [
        "encoder.layer.0.attention.self.query",
        "encoder.layer.0.attention.self.key",
        "encoder.layer.0.attention.self.value",
        "encoder.layer.0.attention.output.dense",
        "encoder.layer.0.intermediate.dense",
        "encoder.layer.0.output.dense",
    ]
    assert fam.base.linears()["encoder.layer.0.intermediate.dense"].out_features == 1536


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("mode", ["unmerged", "merged"])
def test_each_peft_adapter_gives_peft_outputs(
    predictor: Predictor, fam: EncoderFamily, folder: Path, peft_models, name: str, mode: str
) -> None:
    assert fam.text is not None
    expected = peft_reference(folder, peft_models[name], fam, TEXTS)
    out, used = predictor.predict(fam.text.tokenize(TEXTS), [name] * len(TEXTS), mode)  # type: ignore[arg-type]
    assert used == mode
    assert (out - expected).abs().max() <= 1e-5
    plain = peft_reference(folder, None, fam, TEXTS)
    assert (out - plain).abs().max() > 1e-3  # the adapter does change the embeddings


@pytest.mark.parametrize("mode", ["auto", "merged"])
def test_a_mixed_ragged_shuffled_batch_equals_each_text_alone_in_peft(
    predictor: Predictor, fam: EncoderFamily, folder: Path, peft_models, mode: str
) -> None:
    assert fam.text is not None
    rng = random.Random(0)
    rows = [(t, rng.choice([*CONFIGS, None])) for t in TEXTS * 3]
    rng.shuffle(rows)
    texts, names = [t for t, _ in rows], [n for _, n in rows]
    out, used = predictor.predict(fam.text.tokenize(texts), names, mode)  # type: ignore[arg-type]
    assert used == ("unmerged" if mode == "auto" else "merged")
    for name in {*names}:
        idx = [i for i, n in enumerate(names) if n == name]
        adapter = None if name is None else peft_models[name]
        expected = peft_reference(folder, adapter, fam, [texts[i] for i in idx])
        assert (out[idx] - expected).abs().max() <= 1e-5, name


def test_downloaded_adapters_load_back_into_peft_with_the_same_outputs(
    predictor: Predictor, fam: EncoderFamily, folder: Path, tmp_path: Path
) -> None:
    assert fam.text is not None
    files = predictor.registry.files("all8")
    for filename, data in files.items():
        (tmp_path / filename).write_bytes(data)
    expected, _ = predictor.predict(fam.text.tokenize(TEXTS), ["all8"] * len(TEXTS), "unmerged")
    assert (peft_reference(folder, tmp_path, fam, TEXTS) - expected).abs().max() <= 1e-5


def test_an_adapter_saved_from_a_task_model_is_refused_with_the_reason(
    predictor: Predictor, folder: Path, tmp_path: Path
) -> None:
    model = BertForSequenceClassification.from_pretrained(
        folder, local_files_only=True, num_labels=2
    )
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], task_type="SEQ_CLS")
    get_peft_model(model, config).save_pretrained(tmp_path)
    before = predictor.registry.list()
    with pytest.raises(InvalidAdapter) as info:
        predictor.registry.upload(
            "task",
            (tmp_path / "adapter_config.json").read_bytes(),
            (tmp_path / "adapter_model.safetensors").read_bytes(),
        )
    assert info.value.status == 422
    assert "modules_to_save" in info.value.message
    assert predictor.registry.list() == before
    # Without modules_to_save, the task model's `bert.` prefix still names no layer of this fam.
    raw = json.loads((tmp_path / "adapter_config.json").read_bytes())
    raw["modules_to_save"] = None
    raw["target_modules"] = ["bert.encoder.layer.0.attention.self.query"]
    with pytest.raises(InvalidAdapter) as info:
        predictor.registry.upload(
            "task",
            json.dumps(raw).encode(),
            (tmp_path / "adapter_model.safetensors").read_bytes(),
        )
    assert info.value.status == 422
    assert predictor.registry.list() == before


def test_concurrent_text_requests_are_batched_and_each_gets_its_own_rows(
    predictor: Predictor, fam: EncoderFamily
) -> None:
    import asyncio

    from app.engine import Batcher, ComputeThread

    assert fam.text is not None
    encoder = fam.text
    chunks = [TEXTS[i : i + 1 + i % 3] for i in range(len(TEXTS))]  # 1 to 3 texts each
    requests = [
        (texts, [list(CONFIGS)[i % 3] if i % 4 else None] * len(texts))
        for i, texts in enumerate(chunks)
    ]
    alone = [predictor.predict(encoder.tokenize(t), n, "unmerged")[0] for t, n in requests]
    sizes: list[int] = []
    batcher = Batcher(
        predictor,
        ComputeThread(),
        lambda rows, mode: sizes.append(rows),
        max_batch_rows=64,
        batch_wait_ms=50,
        max_queue_rows=1000,
    )

    async def main():
        pending = [
            asyncio.ensure_future(batcher.submit(encoder.tokenize(t), n, "unmerged", "adapters"))
            for t, n in requests
        ]
        await asyncio.sleep(0.01)  # all queued before the thread starts: one batch
        batcher.start()
        return await asyncio.gather(*pending)

    try:
        results = asyncio.run(main())
    finally:
        batcher.stop()
    assert sizes == [sum(len(n) for _, n in requests)]
    for result, expected in zip(results, alone, strict=True):
        assert (result.outputs - expected).abs().max() <= 1e-5
