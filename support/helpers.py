"""Test helpers: tiny base models on disk, PEFT-layout adapters, a longhand reference."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save, save_file
from torch import Tensor, nn

from app.adapters import AdapterRecord, AdapterRegistry
from app.errors import AdapterNotFound
from app.lora import LinearFn, LoraAdapter, plan_scope, wrap_layers

TINY_SIZES = [16, 8, 4]


def write_base_model(
    folder: Path,
    sizes: Sequence[int] = TINY_SIZES,
    bias: bool = True,
    activation: str | None = "relu",
    seed: int = 0,
) -> Path:
    """A random `mlp` base model folder (config.json + model.safetensors)."""
    gen = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"architecture": "mlp", "sizes": list(sizes), "bias": bias, "activation": activation}
    (folder / "config.json").write_text(json.dumps(config))
    state = {}
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        state[f"layer{i + 1}.weight"] = torch.randn(n_out, n_in, generator=gen) / math.sqrt(n_in)
        if bias:
            state[f"layer{i + 1}.bias"] = torch.randn(n_out, generator=gen)
    save_file(state, folder / "model.safetensors")
    return folder


def linears_of(sizes: Sequence[int]) -> dict[str, tuple[int, int]]:
    return {f"layer{i + 1}": (a, b) for i, (a, b) in enumerate(itertools.pairwise(sizes))}


def lora_tensors(
    sizes: Sequence[int],
    targets: Iterable[str],
    r: int | Mapping[str, int],
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> dict[str, Tensor]:
    """Random PEFT-keyed A and B (B non-zero, so the adapter changes outputs)."""
    gen = torch.Generator().manual_seed(seed)
    linears = linears_of(sizes)
    tensors = {}
    for module in targets:
        n_in, n_out = linears[module]
        rank = r[module] if isinstance(r, Mapping) else r
        prefix = f"base_model.model.{module}"
        tensors[f"{prefix}.lora_A.weight"] = (torch.randn(rank, n_in, generator=gen) / n_in).to(
            dtype
        )
        tensors[f"{prefix}.lora_B.weight"] = (torch.randn(n_out, rank, generator=gen) / rank).to(
            dtype
        )
    return tensors


def peft_config(r: int, alpha: float, targets: Sequence[str], **extra: Any) -> dict[str, Any]:
    return {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": alpha,
        "target_modules": list(targets),
        "bias": "none",
        "use_rslora": False,
        "rank_pattern": {},
        "alpha_pattern": {},
        **extra,
    }


def adapter_files(config: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> tuple[bytes, bytes]:
    """(adapter_config.json, adapter_model.safetensors) as bytes."""
    return json.dumps(config).encode(), save(dict(tensors), metadata={"format": "pt"})


def reference_forward(
    base_folder: Path,
    x: Tensor,
    config: Mapping[str, Any] | None = None,
    tensors: Mapping[str, Tensor] | None = None,
) -> Tensor:
    """The model written out longhand in float64: x @ W.T + b + s * (x @ A.T) @ B.T per layer."""
    parts = [] if config is None or tensors is None else [(config, tensors, 1.0)]
    return reference_composition(base_folder, x, parts)


def reference_composition(
    base_folder: Path,
    x: Tensor,
    parts: Sequence[tuple[Mapping[str, Any], Mapping[str, Tensor], float]],
) -> Tensor:
    """A composition written out longhand in float64: per layer
    x @ W.T + b + Σ_i w_i * s_i * (x @ A_i.T) @ B_i.T over the parts (config, tensors, w)."""
    from safetensors.torch import load_file

    spec = json.loads((base_folder / "config.json").read_text())
    state = {k: v.double() for k, v in load_file(base_folder / "model.safetensors").items()}
    act = {"relu": torch.relu, "tanh": torch.tanh, "gelu": torch.nn.functional.gelu, None: None}[
        spec.get("activation")
    ]
    n_layers = len(spec["sizes"]) - 1
    h = x.double()
    for i in range(1, n_layers + 1):
        name = f"layer{i}"
        y = h @ state[f"{name}.weight"].T
        if f"{name}.bias" in state:
            y = y + state[f"{name}.bias"]
        for config, tensors, weight in parts:
            key_a = f"base_model.model.{name}.lora_A.weight"
            if key_a not in tensors:
                continue
            a = tensors[key_a].double()
            b = tensors[f"base_model.model.{name}.lora_B.weight"].double()
            r = a.shape[0]
            alpha = config.get("alpha_pattern", {}).get(name, config["lora_alpha"])
            s = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
            y = y + weight * s * (h @ a.T) @ b.T
        h = act(y) if act is not None and i < n_layers else y
    return h


def forward(model: nn.Module, plan: LinearFn | None, x: Tensor) -> Tensor:
    """`model(x)` with `plan` at its linear layers (wrapped first, as the loader does)."""
    wrap_layers(model)
    with plan_scope(plan):
        return model(x)


def write_tiny_text_model(folder: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-wide BERT with MiniLM's tokenizer and pooling files: a text base that trains
    in milliseconds. Random weights, so only mechanics (not quality) can be tested on it."""
    import shutil

    from transformers import BertConfig, BertModel

    from app.families.encoder.model import known_model_folder

    minilm = known_model_folder("all-MiniLM-L6-v2")
    assert minilm is not None
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128,
    )  # fmt: skip
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json",
                 "modules.json", "sentence_bert_config.json"):  # fmt: skip
        shutil.copy(minilm / name, folder / name)
    shutil.copytree(minilm / "1_Pooling", folder / "1_Pooling", dirs_exist_ok=True)
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    pooling["word_embedding_dimension"] = 32
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return folder


class RegistryByName(AdapterRegistry):
    """For engine tests: rows name adapters by name, where the service passes version ids.

    The engine only needs a key per immutable adapter; the HTTP tests cover the real path
    (names resolved to version ids before a request is queued).
    """

    def load(self, key: str, param: str = "adapter") -> tuple[AdapterRecord, LoraAdapter]:
        try:
            return super().load(key, param)  # a version id
        except AdapterNotFound:
            return super().load(self.resolve(key, param).version, param)
