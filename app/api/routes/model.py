"""The base model's description."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.auth import READ
from app.api.deps import FamilyDep
from app.api.schemas import LinearPublic, ModelPublic

router = APIRouter(tags=["model"])


@router.get("/v1/model", dependencies=READ)
def read_model(family: FamilyDep) -> ModelPublic:
    base, facts = family.base, family.facts
    return ModelPublic(
        name=base.name,
        architecture=base.architecture,
        family=family.name,
        task=family.task,
        inputs=family.inputs,
        input_dim=base.input_dim,
        output_dim=base.output_dim,
        max_seq_length=facts.max_seq_length,
        device=str(base.device),
        dtype=str(base.dtype).removeprefix("torch."),
        parameters=base.parameters,
        target_modules=[
            LinearPublic(name=i.name, in_features=i.in_features, out_features=i.out_features)
            for i in base.linears().values()
        ],
        context_length=facts.context_length,
        vocab_size=facts.vocab_size,
        chat_template=facts.chat_template,
    )
