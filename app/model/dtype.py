"""The serving dtype (setting `DTYPE`): what `auto` means, and which family it applies to.

Hugging Face bases (decoders and text encoders) are served in bf16 where the hardware computes
it natively, and in fp32 elsewhere: CUDA with bf16 support, or an x86 CPU with AVX512-BF16 or
AMX (oneDNN's bf16 kernels). `float32`, `bfloat16` and `float16` are taken as asked. The `mlp`
family is served in the dtype its own config.json names (fp32 unless it says otherwise, and the
seed model is the service's exact fp32 reference): the setting never applies to it, and an
explicit one that differs is logged and not followed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import torch

from app.model.config import DTYPES, InvalidModelConfig

DtypeSetting = Literal["auto", "float32", "bfloat16", "float16"]

log = logging.getLogger("app.model")

# /proc/cpuinfo flags of native bf16 arithmetic on x86 (AVX512-BF16; AMX's bf16 tiles).
_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def _cpuinfo_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively: AVX512-BF16 or AMX, as torch or the kernel says."""
    cpu = torch.cpu
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(cpu, probe, None)
        try:
            if check is not None and check():
                return True
        except RuntimeError:  # pragma: no cover - an old torch without the probe's backend
            pass
    return bool(_BF16_FLAGS & _cpuinfo_flags())


def device_has_native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False


def resolve_dtype(
    setting: DtypeSetting, device: torch.device, own: torch.dtype | None = None
) -> torch.dtype:
    """The dtype a base is served in on `device`; `own`: the dtype its config fixes (the mlp
    family's config.json names one, and DTYPE does not change it)."""
    if setting != "auto" and setting not in DTYPES:
        raise InvalidModelConfig(f"DTYPE must be auto or one of {sorted(DTYPES)}, not {setting!r}")
    if own is not None:
        if setting != "auto" and DTYPES[setting] != own:
            log.warning(
                "DTYPE=%s is not applied to the mlp family: it is served in the dtype its "
                "config.json names (%s)",
                setting,
                str(own).removeprefix("torch."),
            )
        return own
    if setting == "auto":
        return torch.bfloat16 if device_has_native_bf16(device) else torch.float32
    dtype = DTYPES[setting]
    if dtype == torch.bfloat16 and device.type == "cuda" and not device_has_native_bf16(device):
        raise InvalidModelConfig(
            "DTYPE=bfloat16, but this GPU has no native bf16: use float16, float32 or auto"
        )
    return dtype
