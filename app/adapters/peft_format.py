"""The PEFT adapter layout, read strictly: config, tensor names, shapes, dtypes, values.

PEFT's own loader is lenient (it skips unknown keys); a serving store is not: every tensor must
map to a targeted nn.Linear of this base with the right shape, and anything we would silently
serve wrong (DoRA, biases, modules_to_save, inits that rewrote the base) is refused by name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from app.errors import InvalidAdapter, InvalidName
from app.lora import LoraAdapter, LoraConfig, LoraModule

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
KEY_PREFIX = "base_model.model."
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ACCEPTED_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
ACCEPTED_DTYPE_NAMES = set(ACCEPTED_DTYPES.values())

# Config fields that, when set, mean an adapter this service would compute wrongly.
_REFUSED_IF_TRUTHY = (
    "use_dora",
    "lora_bias",
    "modules_to_save",
    "fan_in_fan_out",
    "layers_to_transform",
    "layers_pattern",
    "layer_replication",
    "trainable_token_indices",
    "target_parameters",
    "loftq_config",
    "use_qalora",
    "alora_invocation_tokens",
    "megatron_config",
)
# Initialisations that rewrite the base weights, so the adapter only fits a modified base.
_BASE_REWRITING_INITS = ("pissa", "olora", "loftq", "corda")


def check_name(name: str, param: str = "name") -> str:
    """Adapter names are plain identifiers, never paths."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidName(
            f"adapter name {name!r} must match {NAME_RE.pattern} (letters, digits, '.', '_', '-')",
            param,
        )
    return name


def tensor_key(module: str, which: str) -> str:
    """The PEFT key of a LoRA tensor: base_model.model.<module>.lora_A.weight."""
    return f"{KEY_PREFIX}{module}.{which}.weight"


def _resolve_targets(target: Any, linears: Mapping[str, tuple[int, int]], field: str) -> list[str]:
    """PEFT's matching: a regex string is full-matched; list entries match exactly or as suffix."""
    if isinstance(target, str):
        try:
            pattern = re.compile(target)
        except re.error as exc:
            raise InvalidAdapter(
                f"{field} is not a valid regular expression: {exc}", field
            ) from exc
        return [m for m in linears if pattern.fullmatch(m)]
    if not isinstance(target, list) or not all(isinstance(t, str) for t in target):
        raise InvalidAdapter(f"{field} must be a list of module names or a regex string", field)
    return [m for m in linears if any(m == t or m.endswith("." + t) for t in target)]


def _number(raw: dict[str, Any], field: str, kind: type, default: Any = None) -> Any:
    value = raw.get(field, default)
    ok = isinstance(value, int | float) if kind is float else isinstance(value, int)
    if not ok or isinstance(value, bool) or value <= 0:
        raise InvalidAdapter(f"{field} must be a positive {kind.__name__}, got {value!r}", field)
    return value


def _pattern(raw: dict[str, Any], field: str, kind: type) -> dict[str, Any]:
    value = raw.get(field) or {}
    if not isinstance(value, dict):
        raise InvalidAdapter(f"{field} must be an object of module pattern -> value", field)
    return {str(k): _number(value, k, kind) for k in value}


def parse_config(data: bytes, linears: Mapping[str, tuple[int, int]], max_rank: int) -> LoraConfig:
    """Parse adapter_config.json against this base's linear layers {name: (in, out)}."""
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidAdapter(f"{CONFIG_FILE} is not valid JSON: {exc}", "config") from exc
    if not isinstance(raw, dict):
        raise InvalidAdapter(f"{CONFIG_FILE} must be a JSON object", "config")
    if raw.get("peft_type", "LORA") != "LORA":
        raise InvalidAdapter(f"peft_type must be 'LORA', got {raw['peft_type']!r}", "peft_type")
    for field in _REFUSED_IF_TRUTHY:
        if raw.get(field):
            raise InvalidAdapter(f"{field}={raw[field]!r} is not supported", field)
    if raw.get("bias", "none") != "none":
        raise InvalidAdapter(f"bias must be 'none', got {raw['bias']!r}", "bias")
    init = raw.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(_BASE_REWRITING_INITS):
        raise InvalidAdapter(
            f"init_lora_weights={init!r} rewrites the base weights and is not supported",
            "init_lora_weights",
        )
    r = _number(raw, "r", int)
    alpha = _number(raw, "lora_alpha", float, default=8)
    rank_pattern = _pattern(raw, "rank_pattern", int)
    alpha_pattern = _pattern(raw, "alpha_pattern", float)
    if "target_modules" not in raw or raw["target_modules"] is None:
        raise InvalidAdapter("target_modules is required", "target_modules")
    targets = _resolve_targets(raw["target_modules"], linears, "target_modules")
    if raw.get("exclude_modules"):
        excluded = set(_resolve_targets(raw["exclude_modules"], linears, "exclude_modules"))
        targets = [t for t in targets if t not in excluded]
    if not targets:
        raise InvalidAdapter(
            f"target_modules {raw['target_modules']!r} matches no linear layer of the base "
            f"(layers: {', '.join(linears)})",
            "target_modules",
        )
    config = LoraConfig(
        r=r,
        lora_alpha=float(alpha),
        target_modules=tuple(targets),
        use_rslora=bool(raw.get("use_rslora", False)),
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
    )
    for module in targets:
        if config.rank_for(module) > max_rank:
            raise InvalidAdapter(
                f"rank {config.rank_for(module)} of {module} is over the limit of {max_rank}", "r"
            )
    return config


def config_json(config: LoraConfig, base_model_name: str) -> bytes:
    """adapter_config.json as PEFT writes it, with the exact list of targeted modules."""
    raw = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model_name,
        "r": config.r,
        "lora_alpha": config.lora_alpha,
        "target_modules": list(config.target_modules),
        "use_rslora": config.use_rslora,
        "rank_pattern": config.rank_pattern,
        "alpha_pattern": config.alpha_pattern,
        "bias": "none",
        "fan_in_fan_out": False,
        "lora_dropout": 0.0,
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": None,
    }
    return (json.dumps(raw, indent=2) + "\n").encode()


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


def build_adapter(tensors: Mapping[str, Tensor], config: LoraConfig) -> LoraAdapter:
    """fp32 LoRA modules from checked tensors; refuses NaN and inf."""
    modules = {}
    for module in config.target_modules:
        pair = []
        for which in ("lora_A", "lora_B"):
            key = tensor_key(module, which)
            t = tensors[key].to(torch.float32).contiguous()
            if not torch.isfinite(t).all():
                raise InvalidAdapter(f"{key} holds NaN or inf values", "weights")
            pair.append(t)
        modules[module] = LoraModule(pair[0], pair[1], config.scaling_for(module))
    return LoraAdapter(config, modules)


def header_of(tensors: Mapping[str, Tensor]) -> dict[str, tuple[tuple[int, ...], str]]:
    """The (shape, dtype name) view of loaded tensors, for check_header."""
    return {
        k: (tuple(t.shape), ACCEPTED_DTYPES.get(t.dtype, str(t.dtype))) for k, t in tensors.items()
    }
