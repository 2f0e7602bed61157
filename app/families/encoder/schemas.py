"""Wire types of POST /v1/embeddings: OpenAI's, with our extensions."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.api.schemas import LoraEntry


class EmbeddingsRequest(BaseModel):
    """OpenAI's embeddings request, plus `adapters` (per input) and `lora` (a composition)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = Field(
        default=None,
        description="an adapter's name, or the base model's name (or null, our extension) for none",
    )
    input: str | list[str] = Field(description="one text or a list of texts")
    encoding_format: Literal["float", "base64"] = Field(
        default="float", description="base64: each embedding's float32 bytes, little-endian"
    )
    dimensions: int | None = Field(
        default=None, description="accepted only when it is the model's embedding size"
    )
    user: str | None = Field(default=None, description="accepted for compatibility, unused")
    adapters: list[str | Annotated[list[LoraEntry], Field(min_length=1)] | None] | None = Field(
        default=None,
        description="our extension: one adapter, composition or null per input; `model` is "
        "then the base",
    )
    lora: Annotated[list[LoraEntry], Field(min_length=1)] | None = Field(
        default=None,
        description="our extension: a composition for every input; `model` is then the base",
    )
    mode: Literal["auto", "unmerged", "merged"] = Field(
        default="auto",
        description="our extension, as in /v1/predict: the service chooses (auto), or the "
        "adapter is applied beside the base (unmerged) or merged into a copy (merged)",
    )


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int = Field(description="tokens after truncation, padding excluded")
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage
    mode: Literal["unmerged", "merged"] = Field(description="our extension: the mode used")
