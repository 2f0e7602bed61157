"""The PEFT adapter config file (adapter_config.json), read strictly.

PEFT's own loader is lenient; a serving store is not: anything we would silently serve wrong
(DoRA, biases, modules_to_save, inits that rewrote the base) is refused by name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable, Mapping
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

from app.errors import InvalidAdapter, InvalidName, shorten
from app.lora import LoraConfig
from app.lora.config import PatternError, compile_pattern, suffix_pattern
from app.model.frozen import FROZEN_WHY

CONFIG_FILE = "adapter_config.json"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_FLOAT32_MAX = torch.finfo(torch.float32).max

# Config fields that, when set, mean an adapter this service would compute wrongly.
_REFUSED_IF_TRUTHY = (
    "use_dora",
    "lora_bias",
    "modules_to_save",
    "layers_to_transform",
    "layers_pattern",
    "layer_replication",
    "trainable_token_indices",
    "target_parameters",
    "loftq_config",
    "use_qalora",
    "alora_invocation_tokens",
    "megatron_config",
    # PEFT's other LoRA variants (its `is_lora_variant` fields) change the forward too.
    "velora_config",
    "monteclora_config",
    "use_bdlora",
    "arrow_config",
    "kasa_config",
)
# Why a refused field is refused, where its name alone does not say.
_WHY_REFUSED = {
    "modules_to_save": "an adapter holds only LoRA A and B, never full copies of base layers",
    "trainable_token_indices": "it trains rows of the token embeddings, which every adapter shares",
}
# Initialisations that rewrite the base weights, so the adapter only fits a modified base.
_BASE_REWRITING_INITS = ("pissa", "olora", "loftq", "corda", "lora_ga")

Rank = Annotated[int, Field(gt=0)]
Alpha = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Targets = list[str] | str


class PeftConfigFile(BaseModel):
    """adapter_config.json, strictly typed: no "false" for false, no NaN, no 1e400.

    Only the fields that change the math or must be refused are declared; PEFT's other keys are
    ignored, whatever they hold. The refused variants are typed loosely on purpose: any set value
    is refused by name, whatever its type.
    """

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    peft_type: Literal["LORA"] = "LORA"
    r: Rank
    lora_alpha: Alpha = 8.0
    use_rslora: bool = False
    target_modules: Targets | None = None
    exclude_modules: Targets | None = None
    rank_pattern: dict[str, Rank] | None = None
    alpha_pattern: dict[str, Alpha] | None = None
    bias: Literal["none"] = "none"
    init_lora_weights: bool | str = True
    use_dora: bool | None = None
    lora_bias: bool = False
    fan_in_fan_out: bool = False
    use_qalora: bool = False
    modules_to_save: Any = None
    layers_to_transform: Any = None
    layers_pattern: Any = None
    layer_replication: Any = None
    trainable_token_indices: Any = None
    target_parameters: Any = None
    loftq_config: Any = None
    alora_invocation_tokens: Any = None
    megatron_config: Any = None
    velora_config: Any = None
    monteclora_config: Any = None
    use_bdlora: Any = None
    arrow_config: Any = None
    kasa_config: Any = None


def check_name(name: str, param: str = "name") -> str:
    """Adapter names are plain identifiers, never paths."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidName(
            f"adapter name {shorten(name)!r} must match {NAME_RE.pattern} "
            "(letters, digits, '.', '_', '-')",
            param,
        )
    return name


def _resolve_targets(target: Targets, linears: Iterable[str], field: str) -> list[str]:
    """PEFT's matching: a regex string is full-matched (by RE2); list entries exactly or as suffix."""
    if isinstance(target, str):
        try:
            pattern = compile_pattern(target)
        except PatternError as exc:
            raise InvalidAdapter(f"{field} {shorten(str(exc))}", field) from exc
        return [m for m in linears if pattern.fullmatch(m)]
    return [m for m in linears if any(m == t or m.endswith("." + t) for t in target)]


def _invalid_field(error: ErrorDetails) -> InvalidAdapter:
    """One pydantic error as a 422 naming the field (`rank_pattern.layer1`, say)."""
    if error["type"] == "json_invalid":
        reason = error.get("ctx", {}).get("error", error["msg"])
        return InvalidAdapter(f"{CONFIG_FILE} is not valid JSON: {shorten(reason)}", "config")
    if not error["loc"]:
        return InvalidAdapter(f"{CONFIG_FILE} must be a JSON object", "config")
    # A union adds its member's type to `loc`; only the pattern dicts' keys name something more.
    loc = error["loc"]
    nested = loc[0] in ("rank_pattern", "alpha_pattern") and len(loc) > 1
    field = f"{loc[0]}.{shorten(str(loc[1]))}" if nested else str(loc[0])
    if error["type"] == "missing":
        return InvalidAdapter(f"{field} is required", field)
    return InvalidAdapter(f"{field}: {error['msg']}", field)


def _validate(data: bytes) -> PeftConfigFile:
    try:
        return PeftConfigFile.model_validate_json(data)
    except ValidationError as exc:
        raise _invalid_field(exc.errors(include_input=False)[0]) from exc


def _refuse_frozen(field: str, modules: Iterable[str], frozen: Collection[str]) -> None:
    """422 when `modules` include a causal base's embeddings or output head."""
    touched = [m for m in modules if m in frozen]
    if touched:
        raise InvalidAdapter(f"{field} names {touched[0]}: {FROZEN_WHY}", field)


def parse_config(
    data: bytes,
    linears: Mapping[str, tuple[int, int]],
    max_rank: int,
    conv1d: Collection[str] = frozenset(),
    frozen: Collection[str] = frozenset(),
) -> LoraConfig:
    """Parse adapter_config.json against this base's linear layers {name: (in, out)}.

    `conv1d` names the linears that were GPT-2 Conv1Ds, the only ones `fan_in_fan_out` may
    target; `frozen` names a causal base's embeddings and output head, which none may.
    """
    raw = _validate(data)
    saved = raw.modules_to_save
    if isinstance(saved, str | list) and all(isinstance(m, str) for m in saved):
        _refuse_frozen(
            "modules_to_save", _resolve_targets(saved, frozen, "modules_to_save"), frozen
        )
    for field in _REFUSED_IF_TRUTHY:
        value = getattr(raw, field)
        if value:
            why = f": {_WHY_REFUSED[field]}" if field in _WHY_REFUSED else ""
            raise InvalidAdapter(f"{field}={shorten(value)} is not supported{why}", field)
    init = raw.init_lora_weights
    if isinstance(init, str) and init.lower().startswith(_BASE_REWRITING_INITS):
        raise InvalidAdapter(
            f"init_lora_weights={shorten(init)!r} rewrites the base weights and is not supported",
            "init_lora_weights",
        )
    rank_pattern = dict(raw.rank_pattern or {})
    alpha_pattern = dict(raw.alpha_pattern or {})
    for field, patterns in (("rank_pattern", rank_pattern), ("alpha_pattern", alpha_pattern)):
        for key in patterns:
            try:
                suffix_pattern(key)
            except PatternError as exc:
                raise InvalidAdapter(
                    f"{field} key {shorten(key)!r} {shorten(str(exc))}", field
                ) from exc
    for field, ranks in (("r", {"r": raw.r}), ("rank_pattern", rank_pattern)):
        for key, rank in ranks.items():
            if rank > max_rank:
                where = field if field == "r" else f"rank_pattern.{shorten(key)}"
                raise InvalidAdapter(
                    f"rank {shorten(rank)} of {where} is over the limit of {max_rank}", "r"
                )
    if raw.target_modules is None:
        raise InvalidAdapter("target_modules is required", "target_modules")
    # The frozen layers are matched too, so that naming one is refused rather than dropped.
    layers = [*linears, *sorted(set(frozen) - set(linears))]
    targets = _resolve_targets(raw.target_modules, layers, "target_modules")
    if raw.exclude_modules:
        excluded = set(_resolve_targets(raw.exclude_modules, layers, "exclude_modules"))
        targets = [t for t in targets if t not in excluded]
    _refuse_frozen("target_modules", targets, frozen)
    if not targets:
        raise InvalidAdapter(
            f"target_modules {shorten(raw.target_modules)} matches no linear layer of the base "
            f"(layers: {shorten(', '.join(linears), 256)})",
            "target_modules",
        )
    # PEFT writes it for GPT-2's Conv1D, whose weight is (in, out); converted to nn.Linear at
    # load, those layers take A and B as any Linear does. On a real nn.Linear it means a
    # transposed layer this service does not have.
    linear = [t for t in targets if t not in conv1d]
    if raw.fan_in_fan_out and linear:
        raise InvalidAdapter(
            f"fan_in_fan_out=True is only for layers that are Conv1D in the base (GPT-2's "
            f"c_attn, c_proj, c_fc); {linear[0]} is an nn.Linear",
            "fan_in_fan_out",
        )
    config = LoraConfig(
        r=raw.r,
        lora_alpha=float(raw.lora_alpha),
        target_modules=tuple(targets),
        use_rslora=raw.use_rslora,
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
    )
    for module in targets:
        scaling = config.scaling_for(module)
        if not 0 < scaling <= _FLOAT32_MAX:
            raise InvalidAdapter(
                f"the scaling of {module} (alpha / r) is {scaling:g}, beyond float32", "lora_alpha"
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
