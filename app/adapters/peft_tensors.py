"""The PEFT adapter weights file (adapter_model.safetensors), read strictly: every tensor must
map to a targeted nn.Linear of this base, with the right shape, a float dtype and finite values.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from app.errors import InvalidAdapter
from app.lora import LoraAdapter, LoraConfig, LoraModule
from app.model.frozen import FROZEN_MODULES, FROZEN_WHY

WEIGHTS_FILE = "adapter_model.safetensors"
KEY_PREFIX = "base_model.model."
ACCEPTED_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
ACCEPTED_DTYPE_NAMES = set(ACCEPTED_DTYPES.values())


def tensor_key(module: str, which: str) -> str:
    """The PEFT key of a LoRA tensor: base_model.model.<module>.lora_A.weight."""
    return f"{KEY_PREFIX}{module}.{which}.weight"


def expected_shapes(
    config: LoraConfig, linears: Mapping[str, tuple[int, int]]
) -> dict[str, tuple[int, int]]:
    """Every tensor key the adapter must hold, with its shape: A (r, in), B (out, r)."""
    shapes: dict[str, tuple[int, int]] = {}
    for module in config.target_modules:
        n_in, n_out = linears[module]
        r = config.rank_for(module)
        shapes[tensor_key(module, "lora_A")] = (r, n_in)
        shapes[tensor_key(module, "lora_B")] = (n_out, r)
    return shapes


def check_header(
    header: Mapping[str, tuple[tuple[int, ...], str]],
    config: LoraConfig,
    linears: Mapping[str, tuple[int, int]],
) -> None:
    """Keys, shapes and dtypes ({key: (shape, dtype name)}) match the config exactly."""
    expected = expected_shapes(config, linears)
    unknown = sorted(set(header) - set(expected))
    # PEFT keys its embedding LoRA, trainable tokens and saved modules on the layer's own name.
    frozen = [k for k in unknown if set(k.split(".")) & set(FROZEN_MODULES)]
    if frozen:
        module = next(p for p in frozen[0].split(".") if p in FROZEN_MODULES)
        raise InvalidAdapter(f"tensor {frozen[0]} is for {module}: {FROZEN_WHY}", "weights")
    if unknown:
        raise InvalidAdapter(
            f"unexpected tensors {unknown[:5]}; expected only LoRA A/B of {list(config.target_modules)}",
            "weights",
        )
    missing = sorted(set(expected) - set(header))
    if missing:
        raise InvalidAdapter(f"missing tensors {missing[:5]}", "weights")
    for key, (shape, dtype) in header.items():
        if tuple(shape) != expected[key]:
            raise InvalidAdapter(
                f"{key} has shape {tuple(shape)}, expected {expected[key]}", "weights"
            )
        if dtype not in ACCEPTED_DTYPE_NAMES:
            raise InvalidAdapter(f"{key} has dtype {dtype}; accepted: F32, F16, BF16", "weights")


def build_adapter(
    tensors: Mapping[str, Tensor], config: LoraConfig, dtype: torch.dtype = torch.float32
) -> LoraAdapter:
    """fp32 LoRA modules from checked tensors; refuses NaN and inf, and overflow in `dtype`.

    `scaling * B @ A` must fit the dtype it is served in, or every answer would be inf or NaN;
    its entries are at most scaling * r * max|B| * max|A|, a bound that costs one pass.
    """
    limit = torch.finfo(dtype).max
    modules = {}
    for module in config.target_modules:
        pair = []
        for which in ("lora_A", "lora_B"):
            key = tensor_key(module, which)
            t = tensors[key].to(torch.float32).contiguous()
            if not torch.isfinite(t).all():
                raise InvalidAdapter(f"{key} holds NaN or inf values", "weights")
            pair.append(t)
        lora_A, lora_B = pair
        scaling = config.scaling_for(module)
        bound = scaling * config.rank_for(module)
        bound *= float(lora_A.abs().max()) * float(lora_B.abs().max())
        if not bound <= limit:
            raise InvalidAdapter(
                f"scaling * B @ A of {module} may reach {bound:.3g}, beyond {dtype} "
                f"(max {limit:.3g}); answers would not be finite",
                "weights",
            )
        modules[module] = LoraModule(lora_A, lora_B, scaling)
    return LoraAdapter(config, modules)


def header_of(tensors: Mapping[str, Tensor]) -> dict[str, tuple[tuple[int, ...], str]]:
    """The (shape, dtype name) view of loaded tensors, for check_header."""
    return {
        k: (tuple(t.shape), ACCEPTED_DTYPES.get(t.dtype, str(t.dtype))) for k, t in tensors.items()
    }
