"""The rules of POST /v1/predict: rows of vectors in, rows out, each row with its own adapter or
none, through the batching engine. The route (routes.py) only carries HTTP to and from here."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Annotated

import torch
from fastapi import Depends
from fastapi.concurrency import run_in_threadpool

from app.adapters import AdapterRegistry
from app.api.deps import Services, TrafficDep, get_services
from app.api.observability import AdapterTraffic
from app.api.params import UnknownParameter
from app.api.versions import row_versions
from app.engine import Engine, Mode, Result
from app.engine.inputs import check_rows, first_non_finite_rows, names_in, row_adapters
from app.errors import InvalidInput, UnsupportedMediaType, shorten
from app.families.family import Family
from app.families.mlp.io import OCTET, PredictCall, parse_json, parse_safetensors
from app.settings import Settings

# Bodies bigger than this are parsed on a worker thread, so the event loop keeps answering.
_PARSE_INLINE_BYTES = 256 * 1024


@dataclass
class Predictions:
    family: Family
    engine: Engine
    registry: AdapterRegistry
    settings: Settings
    traffic: AdapterTraffic

    def parser(
        self, content_type: str, query: Mapping[str, str], adapter: str | None, mode: Mode
    ) -> Callable[[bytes], PredictCall]:
        """How this body is read: safetensors (adapter and mode in the query) or JSON."""
        self.family.require("regression", "inputs")
        if content_type.startswith(OCTET):
            return partial(parse_safetensors, adapter=adapter, mode=mode)
        if content_type.startswith("application/json"):
            for name in ("adapter", "mode"):
                if name in query:
                    raise UnknownParameter(
                        f"query parameter {name!r} is for {OCTET} bodies; "
                        f"with JSON, put `{name}` in the body",
                        name,
                    )
            return partial(
                parse_json,
                input_dim=self.family.base.input_dim or 0,
                max_rows=self.settings.max_request_rows,
            )
        raise UnsupportedMediaType(f"send application/json or {OCTET}, not {content_type}")

    async def predict(
        self, raw: bytes, parse: Callable[[bytes], PredictCall], project: str
    ) -> Result:
        """The body's rows through the engine, each with the adapter version it names."""
        call = (
            parse(raw) if len(raw) <= _PARSE_INLINE_BYTES else await run_in_threadpool(parse, raw)
        )
        input_dim = self.family.base.input_dim or 0
        x = check_rows(call.x, input_dim, self.settings.max_request_rows)
        names, param = row_adapters(call.adapter, call.adapters, len(x))
        versions = await row_versions(
            self.registry, names, param, project, self.settings.max_adapters_per_request
        )
        result = await self.engine.submit(x, versions, call.mode, param)
        _check_finite(result.outputs)
        self.traffic.record(project, (n for spec in names for n in names_in(spec)))
        return result


def _check_finite(outputs: torch.Tensor) -> None:
    """An answer never carries inf or NaN: inputs this large overflow the model in float32."""
    rows = first_non_finite_rows(outputs)
    if rows:
        raise InvalidInput(
            f"the outputs of rows {shorten(rows)} overflow float32 with this model and adapter; "
            "scale the inputs down",
            "inputs",
        )


async def get_predictions(
    services: Annotated[Services, Depends(get_services)], traffic: TrafficDep
) -> Predictions:
    return Predictions(
        services.family, services.engine, services.registry, services.settings, traffic
    )


PredictionsDep = Annotated[Predictions, Depends(get_predictions)]
