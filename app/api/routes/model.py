"""The base model's description."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.auth import READ
from app.api.deps import Base
from app.api.schemas import LinearPublic, ModelPublic

router = APIRouter(tags=["model"])


@router.get("/v1/model", dependencies=READ)
def read_model(base: Base) -> ModelPublic:
    return ModelPublic(
        name=base.name,
        architecture=base.architecture,
        family=base.family,
        task="embedding" if base.text is not None else "regression",
        inputs="texts" if base.text is not None else "vectors",
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
    )
