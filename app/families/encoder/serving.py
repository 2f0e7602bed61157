"""The rules of POST /v1/embeddings: texts in, one embedding each, as OpenAI's; the adapter
chosen by `model` or, per input, by our `adapters` extension. The route only carries HTTP."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends
from fastapi.concurrency import run_in_threadpool

from app.adapters import AdapterRegistry
from app.adapters.versions import split_ref
from app.api.deps import Services, TrafficDep, get_services
from app.api.observability import AdapterTraffic
from app.api.versions import lora_spec, row_versions
from app.engine import Engine, Result
from app.engine.inputs import RowSpec, names_in, row_adapters
from app.errors import InvalidInput
from app.families.encoder.family import EncoderFamily
from app.families.encoder.schemas import EmbeddingsRequest
from app.families.family import Family
from app.settings import Settings

# Lists longer than this are tokenized on a worker thread, so the event loop keeps answering.
_TOKENIZE_INLINE = 64


@dataclass
class Embeddings:
    family: Family
    engine: Engine
    registry: AdapterRegistry
    settings: Settings
    traffic: AdapterTraffic

    async def embed(self, body: EmbeddingsRequest, project: str) -> tuple[dict[str, Any], Result]:
        """The answer's content, and the engine's result (for its timings)."""
        self.family.require("embedding", "input")
        assert isinstance(self.family, EncoderFamily)
        base, encoder, max_rows = self.family.base, self.family.text, self.settings.max_request_rows
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not 1 <= len(texts) <= max_rows:
            raise InvalidInput(
                f"`input` holds {len(texts)} texts; send 1 <= N <= {max_rows}", "input"
            )
        empty = next((i for i, t in enumerate(texts) if not t), None)
        if empty is not None:
            raise InvalidInput(f"input {empty} is an empty string", "input")
        if body.dimensions is not None and body.dimensions != base.output_dim:
            raise InvalidInput(
                f"this model's embeddings have {base.output_dim} dimensions; "
                f"it cannot shorten them to {body.dimensions}",
                "dimensions",
            )
        names, param = _row_adapters(body, base.name, len(texts))
        if len(texts) <= _TOKENIZE_INLINE:
            tokens = encoder.tokenize(texts)
        else:
            tokens = await run_in_threadpool(encoder.tokenize, texts)
        versions = await row_versions(
            self.registry, names, param, project, self.settings.max_adapters_per_request
        )
        result = await self.engine.submit(tokens, versions, body.mode, param)
        per_text = tokens.mask.sum(dim=1).tolist()
        by_name: dict[str, int] = {}
        for spec, count in zip(names, per_text, strict=True):
            for name in names_in(spec):
                by_name[name] = by_name.get(name, 0) + int(count)
        for name, count in by_name.items():
            self.traffic.record(project, [name], count)
        outputs = result.outputs.numpy()
        if body.encoding_format == "base64":
            # As OpenAI sends it: each embedding's float32 bytes, little-endian, base64-encoded.
            rows: list[Any] = [
                base64.b64encode(row.astype("<f4").tobytes()).decode() for row in outputs
            ]
        else:
            rows = list(outputs)  # orjson writes each float32 row in C, exact when read as float32
        used = tokens.tokens
        content = {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": r} for i, r in enumerate(rows)
            ],
            "model": body.model or base.name,
            "usage": {"prompt_tokens": used, "total_tokens": used},
            "mode": result.mode,
        }
        return content, result


def _row_adapters(body: EmbeddingsRequest, base_name: str, n: int) -> tuple[list[RowSpec], str]:
    """`model` names one adapter (or the base); our extensions: `lora`, a composition for every
    input, and `adapters`, an adapter, composition or null per input."""
    by_base = body.model in (None, base_name)
    if body.lora is not None:
        if body.adapters is not None:
            raise InvalidInput("give either `lora` or `adapters`, not both", "lora")
        return [lora_spec(body.lora, body.model, base_name)] * n, "lora"
    if body.adapters is not None:
        if not by_base:
            raise InvalidInput(
                f"`adapters` gives an adapter per input; with it, `model` must be the base "
                f"model's name ({base_name!r})",
                "adapters",
            )
        if len(body.adapters) != n:
            raise InvalidInput(
                f"`adapters` has {len(body.adapters)} entries for {n} inputs", "adapters"
            )
        specs: list[RowSpec] = [
            a if a is None or isinstance(a, str) else [(e.name, e.scale) for e in a]
            for a in body.adapters
        ]
        return row_adapters(None, specs, n)
    if by_base:
        return [None] * n, "model"
    assert body.model is not None
    split_ref(body.model, "model")
    return [body.model] * n, "model"


async def get_embeddings(
    services: Annotated[Services, Depends(get_services)], traffic: TrafficDep
) -> Embeddings:
    return Embeddings(
        services.family, services.engine, services.registry, services.settings, traffic
    )


EmbeddingsDep = Annotated[Embeddings, Depends(get_embeddings)]
