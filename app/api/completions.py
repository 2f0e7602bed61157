"""The rules of /v1/completions and /v1/chat/completions: prompts in, OpenAI's answers out.

Every choice of every prompt is one sequence of the generation engine. A streamed answer is
sent only once each sequence has its first event (so a full queue is still an HTTP 503, not an
error inside a 200 stream); later, chunks go out as tokens arrive. A client that goes away
cancels the tasks here, which frees the sequences at the engine's next step.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from app.api.openai_protocol import ChatCompletionRequest, CompletionRequest
from app.errors import InvalidInput, ServiceError
from app.generate.engine import GenerationEngine, GenEvent
from app.generate.sampling import Choice, SamplingParams
from app.model import BaseModel

Kind = Literal["chat", "completion"]
# max_tokens when a chat request gives none: the rest of the context, at most this (each
# sequence reserves its KV cache for all of it on admission).
DEFAULT_CHAT_MAX_TOKENS = 1024
DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's own default for /v1/completions


@dataclass
class _Choice:
    index: int
    prompt: int  # which prompt it answers
    text: str = ""
    tokens: list[Choice] = field(default_factory=list)
    finish_reason: str | None = None


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
        prompts = [info.apply_chat_template(messages)]
        param = "messages"
        asked = body.max_completion_tokens or body.max_tokens
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
    else:
        texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        prompts = [info.encode(t) for t in texts]
        param = "prompt"
        asked = body.max_tokens
        logprobs = body.logprobs
    params = []
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
        engine.check_fits(len(prompt), max_tokens)
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
                )
            )
    return Prepared(kind, prompts, params, version, body, body.model or base.name)


class Generation:
    """One request's sequences running on the engine."""

    def __init__(self, prepared: Prepared, engine: GenerationEngine) -> None:
        self.p = prepared
        self.engine = engine
        self.id = ("chatcmpl-" if prepared.kind == "chat" else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        n = prepared.request.n
        self.choices = [_Choice(i, i // n) for i in range(len(prepared.params))]
        self._events: asyncio.Queue[tuple[int, GenEvent | BaseException]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> list[tuple[int, GenEvent]]:
        """Start every sequence; the events read until each had its first (errors raise here)."""
        for c in self.choices:
            prompt = self.p.prompts[c.prompt]
            params = self.p.params[c.index]
            stream = self.engine.generate(prompt, self.p.version, params, self.p.request.mode)
            self._tasks.append(asyncio.create_task(self._pump(c.index, stream)))
        seen: set[int] = set()
        read: list[tuple[int, GenEvent]] = []
        try:
            while len(seen) < len(self.choices):
                index, item = await self._events.get()
                if isinstance(item, BaseException):
                    raise item
                seen.add(index)
                read.append((index, item))
        except BaseException:
            self.cancel()
            raise
        return read

    async def _pump(self, index: int, stream: AsyncIterator[GenEvent]) -> None:
        try:
            async for event in stream:
                self._events.put_nowait((index, event))
        except Exception as exc:  # sent to the reader, who raises or reports it
            self._events.put_nowait((index, exc))
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()

    def _take(self, index: int, event: GenEvent) -> None:
        c = self.choices[index]
        c.text += event.text
        c.tokens += event.tokens
        if event.finish_reason is not None:
            c.finish_reason = event.finish_reason

    def usage(self) -> dict[str, int]:
        prompt = sum(len(p) for p in self.p.prompts)
        completion = sum(len(c.tokens) for c in self.choices)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    async def answer(self) -> dict[str, Any]:
        """The whole answer, as OpenAI's non-streamed one."""
        try:
            for index, event in await self.start():
                self._take(index, event)
            while any(c.finish_reason is None for c in self.choices):
                index, item = await self._events.get()
                if isinstance(item, BaseException):
                    raise item
                self._take(index, item)
        finally:
            self.cancel()
        out = [self._choice_body(c, c.text, c.tokens, c.finish_reason) for c in self.choices]
        return {
            "id": self.id,
            "object": "chat.completion" if self.p.kind == "chat" else "text_completion",
            "created": self.created,
            "model": self.p.model,
            "choices": out,
            "usage": self.usage(),
        }

    async def stream(self, firsts: list[tuple[int, GenEvent]]) -> AsyncIterator[bytes]:
        """Server-sent events after `start()`: chunks, the usage if asked, then [DONE]."""
        try:
            if self.p.kind == "chat":
                for c in self.choices:  # OpenAI's first chunk gives each choice its role
                    yield self._sse(self._chunk([{"index": c.index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]))  # fmt: skip
            pending = firsts
            while True:
                for index, event in pending:
                    self._take(index, event)
                    body = self._delta_body(self.choices[index], event)
                    if body is not None:
                        yield self._sse(self._chunk([body]))
                if all(c.finish_reason is not None for c in self.choices):
                    break
                index, item = await self._events.get()
                if isinstance(item, BaseException):
                    yield self._sse(_error_body(item))
                    break
                pending = [(index, item)]
            options = self.p.request.stream_options
            if options is not None and options.include_usage:
                yield self._sse(self._chunk([], usage=self.usage()))
            yield b"data: [DONE]\n\n"
        finally:
            self.cancel()

    def _chunk(self, choices: list[dict[str, Any]], usage: Any = None) -> dict[str, Any]:
        chunk = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.p.kind == "chat" else "text_completion",
            "created": self.created,
            "model": self.p.model,
            "choices": choices,
        }
        options = self.p.request.stream_options
        if options is not None and options.include_usage:
            chunk["usage"] = usage  # null on every chunk but the last, as OpenAI sends it
        return chunk

    def _delta_body(self, c: _Choice, event: GenEvent) -> dict[str, Any] | None:
        if (
            not event.text
            and event.finish_reason is None
            and self.p.params[c.index].logprobs is None
        ):
            return None
        return self._choice_body(c, event.text, list(event.tokens), event.finish_reason, delta=True)

    def _choice_body(
        self,
        c: _Choice,
        text: str,
        tokens: list[Choice],
        finish: str | None,
        delta: bool = False,
    ) -> dict[str, Any]:
        want = self.p.params[c.index].logprobs is not None
        if self.p.kind == "chat":
            body: dict[str, Any] = {"index": c.index}
            if delta:
                body["delta"] = {"content": text} if text else {}
            else:
                body["message"] = {"role": "assistant", "content": text}
            body["logprobs"] = {"content": self._chat_logprobs(tokens)} if want else None
        else:
            body = {"index": c.index, "text": text}
            body["logprobs"] = self._completion_logprobs(tokens) if want else None
        body["finish_reason"] = finish
        return body

    def _token_text(self, token: int) -> str:
        return str(self.engine.info.tokenizer.decode([token]))

    def _chat_logprobs(self, tokens: list[Choice]) -> list[dict[str, Any]]:
        def entry(token: int, logprob: float) -> dict[str, Any]:
            text = self._token_text(token)
            return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

        return [
            {**entry(t.token, t.logprob or 0.0), "top_logprobs": [entry(i, lp) for i, lp in t.top]}
            for t in tokens
        ]

    def _completion_logprobs(self, tokens: list[Choice]) -> dict[str, Any]:
        texts = [self._token_text(t.token) for t in tokens]
        offsets, at = [], 0
        for text in texts:
            offsets.append(at)
            at += len(text)
        return {
            "tokens": texts,
            "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [{self._token_text(i): lp for i, lp in t.top} for t in tokens],
            "text_offset": offsets,
        }

    @staticmethod
    def _sse(payload: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps(payload) + b"\n\n"


def _error_body(exc: BaseException) -> dict[str, Any]:
    """An error after the stream began, as vLLM sends it: one event holding the envelope."""
    if isinstance(exc, ServiceError):
        return {"error": {"type": exc.error_type, "code": exc.code, "message": exc.message, "param": exc.param}}  # fmt: skip
    return {"error": {"type": "server_error", "code": "internal_error", "message": str(exc), "param": None}}  # fmt: skip
