"""What a request constrains its answer to, from OpenAI's `response_format` or vLLM's
`structured_outputs`: a JSON schema, any JSON object, a regex, a choice or an EBNF grammar.

A constraint is checked for size here (a schema too large or too deep to compile quickly is a
422 naming its field), compiled against the base's tokenizer by generate/grammar.py, and then
applied to each of the request's sequences, token by token, inside the shared batch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from app.errors import InvalidInput
from app.families.decoder.protocol import ChatCompletionRequest, CompletionRequest

MAX_SPEC_CHARS = 64 * 1024  # a schema, regex or grammar, as text
MAX_SCHEMA_DEPTH = 24  # nested objects and arrays in a schema
MAX_CHOICES, MAX_CHOICE_CHARS = 256, 1024

Kind = Literal["json_schema", "json_object", "regex", "choice", "grammar"]


@dataclass(frozen=True)
class Constraint:
    """One request's constraint: its kind, its text (the cache key with the kind), its field."""

    kind: Kind
    text: str
    param: str


def constraint_of(body: ChatCompletionRequest | CompletionRequest) -> Constraint | None:
    """The request's constraint, checked for size; None for free text."""
    fmt, so = body.response_format, body.structured_outputs
    if fmt is not None and so is not None:
        raise InvalidInput(
            "give `response_format` or `structured_outputs`, not both", "structured_outputs"
        )
    if fmt is not None:
        if fmt.type == "text":
            return None
        if fmt.type == "json_object":
            return Constraint("json_object", "", "response_format")
        assert fmt.json_schema is not None
        return _schema(fmt.json_schema.schema_, "response_format.json_schema.schema")
    if so is None:
        return None
    if so.json_ is not None:
        if isinstance(so.json_, str):
            try:
                loaded = json.loads(so.json_)
            except ValueError:
                raise InvalidInput(
                    "not a JSON schema: not JSON", "structured_outputs.json"
                ) from None
            if not isinstance(loaded, dict):
                raise InvalidInput("a JSON schema is an object", "structured_outputs.json")
            return _schema(loaded, "structured_outputs.json")
        return _schema(so.json_, "structured_outputs.json")
    if so.regex is not None:
        return Constraint(
            "regex", _sized(so.regex, "structured_outputs.regex"), "structured_outputs.regex"
        )
    if so.choice is not None:
        if len(so.choice) > MAX_CHOICES or any(len(c) > MAX_CHOICE_CHARS for c in so.choice):
            raise InvalidInput(
                f"at most {MAX_CHOICES} choices of at most {MAX_CHOICE_CHARS} characters",
                "structured_outputs.choice",
            )
        if any(not c for c in so.choice):
            raise InvalidInput("a choice must not be empty", "structured_outputs.choice")
        return Constraint("choice", json.dumps(so.choice), "structured_outputs.choice")
    assert so.grammar is not None
    return Constraint(
        "grammar", _sized(so.grammar, "structured_outputs.grammar"), "structured_outputs.grammar"
    )


def _schema(schema: dict[str, Any], param: str) -> Constraint:
    if _depth(schema) > MAX_SCHEMA_DEPTH:
        raise InvalidInput(
            f"the schema nests objects and arrays deeper than {MAX_SCHEMA_DEPTH} levels", param
        )
    # Canonical text: the same schema written in another key order is the same cache entry.
    return Constraint("json_schema", _sized(json.dumps(schema, sort_keys=True), param), param)


def _sized(text: str, param: str) -> str:
    if len(text) > MAX_SPEC_CHARS:
        raise InvalidInput(f"{len(text)} characters; at most {MAX_SPEC_CHARS}", param)
    return text


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_SCHEMA_DEPTH:
        return level  # deep enough to refuse: no need to walk the rest
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level)
    return level
