"""Prompts in: a generation request checked and tokenized before any sequence starts.

`prepare` renders the chat template and tokenizes (seconds for megabytes of text), so it runs
off the event loop; text that could never fit the context is refused before it is tokenized.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from app.errors import InvalidInput
from app.families.decoder.constraints import constraint_of
from app.families.decoder.generate.engine import GenerationEngine
from app.families.decoder.generate.sampling import SamplingParams
from app.families.decoder.protocol import ChatCompletionRequest, CompletionRequest
from app.model import BaseModel

Kind = Literal["chat", "completion"]
# max_tokens when a chat request gives none: the rest of the context, at most this (each
# sequence reserves its KV cache for all of it on admission).
DEFAULT_CHAT_MAX_TOKENS = 1024
DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's own default for /v1/completions


@dataclass(frozen=True)
class Prepared:
    """A request checked and tokenized: the prompts, the sampling rules, the adapter."""

    kind: Kind
    prompts: list[list[int]]
    params: list[SamplingParams]  # one per choice, prompt-major
    version: str | None
    request: ChatCompletionRequest | CompletionRequest
    model: str


def prepare(
    body: ChatCompletionRequest | CompletionRequest,
    base: BaseModel,
    engine: GenerationEngine,
    version: str | None,
) -> Prepared:
    """Tokenize and check everything before any sequence starts (422s change nothing)."""
    info = engine.info
    kind: Kind = "chat" if isinstance(body, ChatCompletionRequest) else "completion"
    if isinstance(body, ChatCompletionRequest):
        if not info.has_chat_template:
            raise InvalidInput(
                f"the base model {base.name!r} has no chat template; use POST /v1/completions",
                "messages",
            )
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        engine.limits.check_text(sum(len(m["content"]) for m in messages), "messages")
        prompts = [info.apply_chat_template(messages)]
        param = "messages"
        asked = body.max_completion_tokens or body.max_tokens
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
    else:
        texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        for text in texts:
            engine.limits.check_text(len(text), "prompt")
        prompts = [info.encode(t) for t in texts]
        param = "prompt"
        asked = body.max_tokens
        logprobs = body.logprobs
    constraint = constraint_of(body)
    # Compiled here, off the engine's thread (a new schema takes milliseconds; a cached one,
    # nothing): the running sequences never wait for it.
    grammar = None if constraint is None else engine.grammars.compile(constraint)
    params = []
    sizes: list[tuple[int, int]] = []
    for i, prompt in enumerate(prompts):
        if not prompt:
            raise InvalidInput(f"{param} {i} holds no tokens", param)
        room = info.context_length - len(prompt)
        if room <= 0:
            raise InvalidInput(
                f"{param} {i} is {len(prompt)} tokens; the model's context is "
                f"{info.context_length}, with room for at least one new token",
                param,
            )
        default = DEFAULT_CHAT_MAX_TOKENS if kind == "chat" else DEFAULT_COMPLETION_MAX_TOKENS
        max_tokens = asked if asked is not None else min(room, default)
        sizes += [(len(prompt), max_tokens)] * body.n
        for j in range(body.n):
            params.append(
                SamplingParams(
                    max_tokens=max_tokens,
                    temperature=body.temperature,
                    top_p=body.top_p,
                    top_k=body.top_k,
                    seed=None if body.seed is None else body.seed + j,
                    stop=body.stops(),
                    stop_token_ids=tuple(body.stop_token_ids or ()),
                    logprobs=logprobs,
                    ignore_eos=body.ignore_eos,
                    grammar=grammar,
                    json_grammar=constraint is not None and constraint.kind.startswith("json"),
                )
            )
    engine.limits.check_request(sizes, "n" if body.n > 1 or len(prompts) == 1 else param)
    return Prepared(kind, prompts, params, version, body, body.model or base.name)
