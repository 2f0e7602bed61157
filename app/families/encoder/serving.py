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
from app.api.deps import Services, get_services
from app.api.versions import versions_of
from app.engine import Engine, Result
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
        versions = await versions_of(self.registry, names, param, project)
        result = await self.engine.submit(tokens, versions, body.mode, param)
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


def _row_adapters(body: EmbeddingsRequest, base_name: str, n: int) -> tuple[list[str | None], str]:
    """`model` names one adapter (or the base); our `adapters` extension names one per input."""
    if body.adapters is not None:
        if body.model not in (None, base_name):
            raise InvalidInput(
                f"`adapters` gives an adapter per input; with it, `model` must be the base "
                f"model's name ({base_name!r})",
                "adapters",
            )
        if len(body.adapters) != n:
            raise InvalidInput(
                f"`adapters` has {len(body.adapters)} entries for {n} inputs", "adapters"
            )
        for name in body.adapters:
            if name is not None:
                split_ref(name, "adapters")
        return list(body.adapters), "adapters"
    if body.model is None or body.model == base_name:
        return [None] * n, "model"
    split_ref(body.model, "model")
    return [body.model] * n, "model"


async def get_embeddings(services: Annotated[Services, Depends(get_services)]) -> Embeddings:
    return Embeddings(services.family, services.engine, services.registry, services.settings)


EmbeddingsDep = Annotated[Embeddings, Depends(get_embeddings)]
