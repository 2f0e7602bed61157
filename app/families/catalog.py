"""Which family a base model folder holds, and loading it: the one place that knows them all."""

from __future__ import annotations

from pathlib import Path

import torch

from app.families.decoder.family import DecoderFamily
from app.families.decoder.gguf import converted_folder, known_gguf
from app.families.encoder.family import EncoderFamily
from app.families.encoder.model import known_model_folder
from app.families.family import Family
from app.families.mlp.family import MlpFamily
from app.model import BaseModel
from app.model.dtype import DtypeSetting

# Asked in this order; the last, ours, answers for any folder that is not Hugging Face's.
FAMILIES: tuple[type[Family], ...] = (DecoderFamily, EncoderFamily, MlpFamily)


def detect(folder: Path) -> type[Family]:
    """The family of the base in `folder`, read from its config.json."""
    return next(f for f in FAMILIES if f.claims(folder))


def load_family(
    folder: Path,
    device: torch.device,
    name: str | None = None,
    cache_dir: Path | None = None,
    dtype: DtypeSetting = "float32",
) -> Family:
    """The base in `folder`, loaded by its family, frozen, on `device`.

    `folder` may also be the name of a packaged model (KNOWN_MODELS, KNOWN_GGUF), which then
    names the base unless `name` is given, or a `.gguf` file, converted once into a folder under
    `cache_dir` (default: beside the file). `dtype` is the DTYPE setting (app.model.dtype): the
    service passes its own; the default, fp32, is the exact reference that tests and scripts
    compare with transformers.
    """
    if not folder.exists():
        packaged = known_model_folder(str(folder)) or known_gguf(str(folder))
        if packaged is not None:
            name, folder = name or str(folder), packaged
    if folder.suffix == ".gguf" and folder.is_file():
        name = name or folder.stem
        folder = converted_folder(folder, cache_dir or folder.parent / ".loraserve-models")
    return detect(folder).load(folder, device, name or folder.resolve().name, dtype)


def load_base_model(
    folder: Path,
    device: torch.device,
    name: str | None = None,
    cache_dir: Path | None = None,
    dtype: DtypeSetting = "float32",
) -> BaseModel:
    """The base alone, for callers that need no family parts (tests, benches)."""
    return load_family(folder, device, name, cache_dir, dtype).base
