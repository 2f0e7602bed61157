"""Wire types of the OpenAI completions and chat completions routes (requests only).

Unknown fields are refused (422 naming the field): a client that asks for tools or a logit
bias must hear that it will not get them, never a silently different answer. Penalties are
accepted only at their neutral value, which is what we compute. A response format (OpenAI's
`response_format`, or vLLM's `structured_outputs`) constrains the answer (constraints.py).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.api.schemas import LoraEntry
from app.engine.predictor import Mode

MAX_N = 16  # choices per prompt
MAX_STOP = 4  # stop strings, as OpenAI allows
MAX_STOP_CHARS = 256  # each: every step of the stream matches them all
# Seeds are int64 (torch's generator), and choice j of n samples with seed + j.
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1 - MAX_N


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """OpenAI's: plain text, any JSON object, or JSON valid under a schema."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("`json_schema` goes with type json_schema, and only with it")
        return self


class StructuredOutputs(BaseModel):
    """vLLM's extension: exactly one of a JSON schema, a regex, choices or an EBNF grammar."""

    model_config = ConfigDict(extra="forbid")
    json_: dict[str, Any] | str | None = Field(default=None, alias="json")
    regex: str | None = None
    choice: Annotated[list[str], Field(min_length=1)] | None = None
    grammar: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> StructuredOutputs:
        given = [v for v in (self.json_, self.regex, self.choice, self.grammar) if v is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of json, regex, choice or grammar")
        return self


class _GenerationFields(BaseModel):
    """What both routes take."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(default=None, description="an adapter's name, or the base's")
    lora: Annotated[list[LoraEntry], Field(min_length=1)] | None = Field(
        default=None, description="ours: a composition of adapters; `model` is then the base"
    )
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    top_k: Annotated[int, Field(ge=-1)] = Field(default=-1, description="ours, as vLLM: -1 off")
    n: Annotated[int, Field(ge=1, le=MAX_N)] = 1
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP)] | None = None
    stop_token_ids: list[int] | None = Field(default=None, description="ours, as vLLM")
    seed: Annotated[int, Field(ge=SEED_MIN, le=SEED_MAX)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = Field(default=False, description="ours, as vLLM: always max_tokens")
    mode: Mode = Field(default="auto", description="ours: auto, unmerged or merged")
    user: str | None = None  # accepted and unused, as by OpenAI's own servers
    presence_penalty: Annotated[float, Field(ge=0, le=0)] | None = Field(
        default=None, description="only 0: penalties are not applied"
    )
    frequency_penalty: Annotated[float, Field(ge=0, le=0)] | None = Field(
        default=None, description="only 0: penalties are not applied"
    )
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = Field(
        default=None, description="vLLM's extension; not with `response_format`"
    )

    @field_validator("stop")
    @classmethod
    def _stops_not_empty(cls, value: str | list[str] | None) -> str | list[str] | None:
        items = [value] if isinstance(value, str) else value or []
        if any(not s for s in items):
            raise ValueError("stop strings must not be empty")
        if any(len(s) > MAX_STOP_CHARS for s in items):
            raise ValueError(f"stop strings must be at most {MAX_STOP_CHARS} characters")
        return value

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class ChatCompletionRequest(_GenerationFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None


class CompletionRequest(_GenerationFields):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=64)]
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
