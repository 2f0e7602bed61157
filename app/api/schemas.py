"""Wire types of the HTTP API (DESIGN.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Residency = Literal["disk", "host", "device"]


class ErrorDetail(BaseModel):
    type: str
    code: str
    message: str
    param: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class Status(BaseModel):
    status: str


class LinearPublic(BaseModel):
    name: str
    in_features: int
    out_features: int


class ModelPublic(BaseModel):
    name: str
    architecture: str
    input_dim: int
    output_dim: int
    device: str
    dtype: str
    parameters: int
    target_modules: list[LinearPublic]


class AdapterPublic(BaseModel):
    name: str
    rank: int
    alpha: float
    scaling: float
    use_rslora: bool
    target_modules: list[str]
    rank_pattern: dict[str, int]
    alpha_pattern: dict[str, float]
    size_bytes: int
    sha256: str
    created_at: int = Field(description="Unix time, seconds")
    source: Literal["upload", "training"]
    residency: Residency
    merged: bool


class AdapterList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AdapterPublic]


class PredictRequest(BaseModel):
    # Unknown fields are refused so that a typo ("adaptor") is an error, not the base model.
    model_config = ConfigDict(extra="forbid")

    inputs: list[list[float]] = Field(description="(N, input_dim) rows")
    adapter: str | None = Field(default=None, description="one adapter for every row")
    adapters: list[str | None] | None = Field(
        default=None, description="one adapter (or null) per row; not with `adapter`"
    )
    mode: Literal["auto", "unmerged", "merged"] = "auto"


class PredictResponse(BaseModel):
    outputs: list[list[float]]
    mode: Literal["unmerged", "merged"]
