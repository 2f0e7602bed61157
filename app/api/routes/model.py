"""The base model's description."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter

from app.api.auth import READ
from app.api.deps import Base
from app.api.schemas import LinearPublic, ModelPublic

router = APIRouter(tags=["model"])


@router.get("/v1/model", dependencies=READ)
def read_model(base: Base) -> ModelPublic:
    causal = base.causal
    task: Literal["regression", "embedding", "generation"] = "regression"
    if causal is not None:
        task = "generation"
    elif base.text is not None:
        task = "embedding"
    return ModelPublic(
        name=base.name,
        architecture=base.architecture,
        family=base.family,
        task=task,
        inputs="vectors" if base.input_dim is not None else "texts",
        input_dim=base.input_dim,
        output_dim=base.output_dim,
        max_seq_length=base.text.max_seq_length if base.text is not None else None,
        device=str(base.device),
        dtype=str(base.dtype).removeprefix("torch."),
        parameters=base.parameters,
        target_modules=[
            LinearPublic(name=i.name, in_features=i.in_features, out_features=i.out_features)
            for i in base.linears().values()
        ],
        context_length=causal.context_length if causal else None,
        vocab_size=causal.vocab_size if causal else None,
        chat_template=causal.has_chat_template if causal else None,
    )
