"""Load a base model folder frozen, in eval mode: the `mlp` family or a Hugging Face model.

`config.json` tells the families apart: `architecture` for ours, `model_type` for Hugging Face.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from app.lora.layers import wrap_layers
from app.model.causal import CausalInfo, frozen_module
from app.model.config import InvalidModelConfig, ModelConfig
from app.model.dtype import DtypeSetting, resolve_dtype
from app.model.hf import Conv1DLinear
from app.model.mlp import MLP
from app.model.text import TextEncoder, TokenBatch
from app.startup.basekind import is_causal_lm

# Architectures are a small registry: name -> constructor from the config.
ARCHITECTURES: dict[str, Callable[[ModelConfig], nn.Module]] = {"mlp": MLP}

# What one request row is: a vector (mlp) or a tokenized text (a transformer).
Rows = Tensor | TokenBatch


@dataclass(frozen=True)
class LinearInfo:
    """A linear layer LoRA can target."""

    name: str
    in_features: int
    out_features: int


@dataclass
class BaseModel:
    """The frozen base model and what the rest of the service needs to know about it."""

    name: str
    architecture: str  # `mlp`, or the Hugging Face model_type
    module: nn.Module
    device: torch.device
    dtype: torch.dtype
    fingerprint: str  # sha256 of model.safetensors: which base an adapter was made for
    targets: dict[str, nn.Linear]  # the layers LoRA can target (wrapped), by module name
    input_dim: int | None  # an input vector's width; None for a text base
    output_dim: int  # an output row's width, or the embedding size
    config: ModelConfig | None = None  # the mlp family's config
    text: TextEncoder | None = None  # a text base's tokenizer and pooling
    causal: CausalInfo | None = None  # a decoder's tokenizer, template and limits

    @property
    def family(self) -> Literal["mlp", "hf", "causal_lm"]:
        if self.config is not None:
            return "mlp"
        return "causal_lm" if self.causal is not None else "hf"

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def linears(self) -> dict[str, LinearInfo]:
        """Every targetable layer by its module name, in model order."""
        return {
            name: LinearInfo(name, m.in_features, m.out_features)
            for name, m in self.targets.items()
        }

    @property
    def conv1d(self) -> frozenset[str]:
        """The targetable layers that were GPT-2 Conv1Ds (PEFT says `fan_in_fan_out` for them)."""
        return frozenset(n for n, m in self.targets.items() if isinstance(m, Conv1DLinear))

    @property
    def frozen(self) -> frozenset[str]:
        """A causal base's embeddings and output head: no adapter may touch them."""
        if self.causal is None:
            return frozenset()
        return frozenset(n for n, _ in self.module.named_modules() if frozen_module(n))

    def prepare(self, x: Rows) -> Rows:
        """Rows on the model's device (vectors in its dtype)."""
        if isinstance(x, TokenBatch):
            return x.to(self.device)
        return x.to(device=self.device, dtype=self.dtype)

    def run(self, x: Rows) -> Tensor:
        """One forward: (N, output_dim), under whatever plan the caller has set."""
        if self.text is not None:
            assert isinstance(x, TokenBatch)
            return self.text.embed(self.module, x)
        return self.module(x)


def resolve_device(setting: str) -> torch.device:
    """`auto` picks CUDA when present, else the CPU."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("DEVICE=cuda but no CUDA device is available")
    return torch.device(setting)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_module(config: ModelConfig) -> nn.Module:
    """An untrained module of the config's architecture."""
    try:
        constructor = ARCHITECTURES[config.architecture]
    except KeyError:
        raise InvalidModelConfig(
            f"unknown architecture {config.architecture!r}; known: {sorted(ARCHITECTURES)}"
        ) from None
    return constructor(config)


def _is_hf(folder: Path) -> bool:
    """A Hugging Face folder: config.json with `model_type` and no `architecture`."""
    try:
        raw = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError, RecursionError):
        return False  # ModelConfig.load reports it
    return isinstance(raw, dict) and "model_type" in raw and "architecture" not in raw


def load_base_model(
    folder: Path,
    device: torch.device,
    name: str | None = None,
    cache_dir: Path | None = None,
    dtype: DtypeSetting = "float32",
) -> BaseModel:
    """Load any family, frozen, on `device`, its linear layers wrapped (app.lora.layers).

    `folder` may also be the name of a packaged model (app.model.hf.KNOWN_MODELS,
    app.model.gguf.KNOWN_GGUF), which then names the base unless `name` is given, or a `.gguf`
    file, converted once into a folder under `cache_dir` (default: beside the file).
    `dtype` is the DTYPE setting (app.model.dtype): the service passes its own; the default,
    fp32, is the exact reference that tests and scripts compare with transformers.
    """
    if not folder.exists():
        from app.model.gguf import known_gguf
        from app.model.hf import known_model_folder

        packaged = known_model_folder(str(folder)) or known_gguf(str(folder))
        if packaged is not None:
            name, folder = name or str(folder), packaged
    if folder.suffix == ".gguf" and folder.is_file():
        from app.model.gguf import converted_folder

        name = name or folder.stem
        folder = converted_folder(folder, cache_dir or folder.parent / ".loraserve-models")
    if _is_hf(folder) and is_causal_lm(folder):
        return _load_causal(folder, device, name, resolve_dtype(dtype, "causal_lm", device))
    if _is_hf(folder):
        return _load_hf(folder, device, name, resolve_dtype(dtype, "hf", device))
    config = ModelConfig.load(folder)
    resolve_dtype(dtype, "mlp", device, config.torch_dtype)  # its own dtype (logs a mismatch)
    module = build_module(config)
    weights_path = folder / "model.safetensors"
    try:
        state = load_file(weights_path)
    except (OSError, SafetensorError) as exc:
        raise InvalidModelConfig(f"cannot read {weights_path}: {exc}") from exc
    module.load_state_dict(state, strict=True)
    module.to(device=device, dtype=config.torch_dtype)
    module.requires_grad_(False)
    module.eval()
    targets = wrap_layers(module)
    return BaseModel(
        name=name or folder.resolve().name,
        architecture=config.architecture,
        module=module,
        device=device,
        dtype=config.torch_dtype,
        fingerprint=_sha256(weights_path),
        targets=targets,
        input_dim=config.sizes[0],
        output_dim=config.sizes[-1],
        config=config,
    )


def _load_hf(folder: Path, device: torch.device, name: str | None, dtype: torch.dtype) -> BaseModel:
    from app.model.hf import load_hf

    weights_path = folder / "model.safetensors"
    if not weights_path.is_file():
        raise InvalidModelConfig(f"{weights_path} is missing (only safetensors weights are read)")
    module, encoder, dim = load_hf(folder, dtype)
    module.to(device=device)
    targets = wrap_layers(module)
    return BaseModel(
        name=name or folder.resolve().name,
        architecture=str(getattr(getattr(module, "config", None), "model_type", "hf")),
        module=module,
        device=device,
        dtype=dtype,
        fingerprint=_sha256(weights_path),
        targets=targets,
        input_dim=None,
        output_dim=dim,
        text=encoder,
    )


def _load_causal(
    folder: Path, device: torch.device, name: str | None, dtype: torch.dtype
) -> BaseModel:
    from app.model.causal import load_causal

    weights_path = folder / "model.safetensors"
    if not weights_path.is_file():
        raise InvalidModelConfig(f"{weights_path} is missing (only safetensors weights are read)")
    module, info = load_causal(folder, dtype)
    module.to(device=device)
    targets = {n: m for n, m in wrap_layers(module).items() if not frozen_module(n)}
    return BaseModel(
        name=name or folder.resolve().name,
        architecture=str(getattr(module.config, "model_type", "causal_lm")),
        module=module,
        device=device,
        dtype=dtype,
        fingerprint=_sha256(weights_path),
        targets=targets,
        input_dim=None,
        output_dim=info.vocab_size,
        causal=info,
    )
