"""Wire types of POST /v1/predict."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.api.schemas import LoraEntry


class PredictRequest(BaseModel):
    # Unknown fields are refused so that a typo ("adaptor") is an error, not the base model;
    # strict, so that no field's value is coerced into something the client did not write.
    model_config = ConfigDict(extra="forbid", strict=True)

    inputs: list[list[float]] = Field(description="(N, input_dim) rows")
    adapter: str | Annotated[list[LoraEntry], Field(min_length=1)] | None = Field(
        default=None, description="one adapter, or a composition, for every row"
    )
    adapters: list[str | Annotated[list[LoraEntry], Field(min_length=1)] | None] | None = Field(
        default=None, description="one adapter, composition or null per row; not with `adapter`"
    )
    mode: Literal["auto", "unmerged", "merged"] = "auto"


class PredictResponse(BaseModel):
    outputs: list[list[float]]
    mode: Literal["unmerged", "merged"]
