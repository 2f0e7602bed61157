"""Prediction bodies in and out: JSON parsed straight into a tensor, or safetensors both ways.

256 rows of 1001 floats are 256,256 numbers: validated one by one as pydantic floats they cost
more than the model. So `inputs` goes through orjson and numpy; the other fields through the
pydantic model, so their errors read as before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import chain
from typing import Annotated, Any

import numpy as np
import orjson
import torch
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import Field, TypeAdapter, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save
from torch import Tensor

from app.api.schemas import LoraEntry
from app.engine import Mode
from app.engine.inputs import RowSpec
from app.errors import InvalidInput, ServiceError, shorten
from app.families.mlp.schemas import PredictRequest

OCTET = "application/octet-stream"


class MalformedBody(ServiceError):
    status = 400
    code = "invalid_json"


@dataclass(frozen=True)
class PredictCall:
    """A parsed prediction request, whatever its wire format."""

    x: Tensor  # (N, cols) float32, shape not yet checked against the model
    adapter: RowSpec
    adapters: list[RowSpec] | None
    mode: Mode


_NON_FINITE_TOKEN = re.compile(rb"(?<![A-Za-z\"])-?(NaN|Infinity)(?![A-Za-z\"])")


def loads_strict(raw: bytes, param: str | None = "inputs") -> Any:
    """JSON as RFC 8259 has it: NaN, Infinity and numbers past float64 are refused (422).

    orjson also refuses nesting deeper than 1024 levels, so a hostile body cannot exhaust the
    stack the way Python's recursive json module can.
    """
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        reason = str(exc)
        if "infinity" in reason or _NON_FINITE_TOKEN.search(raw):
            raise InvalidInput(
                "numbers must be finite: NaN, Infinity and values beyond float64 are refused",
                param,
            ) from exc
        if "depth limit" in reason:
            raise MalformedBody("the body is nested too deeply (over 1024 levels)") from exc
        raise MalformedBody(f"the body is not valid JSON: {shorten(reason, 200)}") from exc


def _rows(value: Any, input_dim: int, max_rows: int) -> Tensor:
    """JSON rows as a float32 tensor, refusing ragged or wrongly sized rows by index."""
    shape = f"(N, {input_dim}) with 1 <= N <= {max_rows}"
    if not isinstance(value, list) or not all(isinstance(row, list) for row in value):
        raise InvalidInput(f"inputs must be a list of rows of numbers, shape {shape}", "inputs")
    if not value:
        raise InvalidInput(f"inputs is empty; must have shape {shape}", "inputs")
    if len(value) > max_rows:
        raise InvalidInput(f"inputs has {len(value)} rows; must have shape {shape}", "inputs")
    for i, row in enumerate(value):
        if len(row) != input_dim:
            raise InvalidInput(
                f"inputs row {i} has {len(row)} values; must have shape {shape}", "inputs"
            )
    # Strict: "1.5" or true is not a number. One pass in C over every value's type.
    kinds = set(map(type, chain.from_iterable(value)))
    if not kinds <= {float, int}:
        wrong = sorted(k.__name__ for k in kinds - {float, int})
        raise InvalidInput(
            f"inputs must hold only numbers, not {', '.join(wrong)}; shape {shape}", "inputs"
        )
    try:
        with np.errstate(over="ignore"):  # beyond float32 becomes inf, refused by check_rows
            array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidInput(f"inputs must hold only numbers, shape {shape}", "inputs") from exc
    return torch.from_numpy(array)


def parse_json(raw: bytes, input_dim: int, max_rows: int) -> PredictCall:
    body = loads_strict(raw)
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object", None)
    if "inputs" not in body:
        raise RequestValidationError(
            [{"loc": ("body", "inputs"), "msg": "Field required", "type": "missing"}]
        )
    inputs = body.pop("inputs")
    try:
        fields = PredictRequest.model_validate({**body, "inputs": []})
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from exc
    adapters = None if fields.adapters is None else [_spec(a) for a in fields.adapters]
    return PredictCall(
        _rows(inputs, input_dim, max_rows), _spec(fields.adapter), adapters, fields.mode
    )


def _spec(value: str | list[LoraEntry] | None) -> RowSpec:
    """A name, None, or a composition as (name, scale) pairs."""
    if value is None or isinstance(value, str):
        return value
    return [(e.name, e.scale) for e in value]


def parse_safetensors(raw: bytes, adapter: str | None, mode: Mode) -> PredictCall:
    try:
        tensors = load_safetensors(raw)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise InvalidInput(f"the body is not a valid safetensors file: {exc}", "inputs") from exc
    if set(tensors) != {"inputs"}:
        raise InvalidInput(
            f"the safetensors body must hold one tensor `inputs`, not {sorted(tensors)}", "inputs"
        )
    x = tensors["inputs"]
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise InvalidInput(f"inputs has dtype {x.dtype}; send F32, F16 or BF16", "inputs")
    adapters = _metadata_adapters(raw)
    return PredictCall(_as_float32(x), adapter, adapters, mode)


def _as_float32(x: Tensor) -> Tensor:
    """F16/BF16 rows widened exactly with numpy: on the event loop, a torch op on a big tensor
    would start an OpenMP team there (app/engine/compute.py)."""
    if x.dtype == torch.float32:
        return x
    if x.dtype == torch.float16:
        return torch.from_numpy(x.numpy().astype(np.float32))
    # bfloat16 is the top half of a float32: shift its bits into place.
    bits = x.view(torch.int16).numpy().astype(np.int32) << 16
    return torch.from_numpy(bits.view(np.float32))


def _metadata_adapters(raw: bytes) -> list[RowSpec] | None:
    """The `adapters` entry of the safetensors header metadata: a JSON list with, per row, a
    name, null, or a composition (a list of {"name", "scale"})."""
    header_len = int.from_bytes(raw[:8], "little")
    header = orjson.loads(raw[8 : 8 + header_len])
    value = (header.get("__metadata__") or {}).get("adapters")
    if value is None:
        return None
    try:
        rows = _ROW_SPECS.validate_json(value)
    except ValidationError as exc:
        raise InvalidInput(
            "metadata `adapters` must be a JSON list of names, nulls or compositions "
            '(lists of {"name", "scale"})',
            "adapters",
        ) from exc
    return [_spec(r) for r in rows]


_ROW_SPECS = TypeAdapter(list[str | Annotated[list[LoraEntry], Field(min_length=1)] | None])


def encode(outputs: Tensor, mode: str, binary: bool, headers: dict[str, str]) -> Response:
    """JSON (float32 values, exact when read back as float32) or a safetensors `outputs` file."""
    if binary:
        body = save({"outputs": outputs.contiguous()}, metadata={"mode": mode})
        return Response(body, media_type=OCTET, headers={**headers, "X-Mode": mode})
    body = orjson.dumps(
        {"outputs": outputs.numpy(), "mode": mode}, option=orjson.OPT_SERIALIZE_NUMPY
    )
    return Response(body, media_type="application/json", headers=headers)
