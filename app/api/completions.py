"""The rules of /v1/completions and /v1/chat/completions: prompts in, OpenAI's answers out.

Every choice of every prompt is one sequence of the generation engine. A streamed answer is
sent only once each sequence has its first event (so a full queue is still an HTTP 503, not an
error inside a 200 stream); later, chunks go out as tokens arrive. A client that goes away
closes the sequences here, which frees them: at once while they wait, at the engine's next
step once they run. `prepare` tokenizes (seconds for megabytes of text), so it runs off the
event loop; text that could never fit the context is refused before it is tokenized.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from app.api.logprobs import TokenTexts
from app.api.openai_protocol import ChatCompletionRequest, CompletionRequest
from app.errors import InvalidInput, ServiceError
from app.generate.engine import GenerationEngine, GenEvent, SequenceEvents
from app.generate.sampling import Choice, SamplingParams
from app.model import BaseModel

log = logging.getLogger("app.generate")

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
        _check_length(sum(len(m["content"]) for m in messages), engine, "messages")
        prompts = [info.apply_chat_template(messages)]
        param = "messages"
        asked = body.max_completion_tokens or body.max_tokens
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
    else:
        texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        for text in texts:
            _check_length(len(text), engine, "prompt")
        prompts = [info.encode(t) for t in texts]
        param = "prompt"
        asked = body.max_tokens
        logprobs = body.logprobs
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
        engine.check_fits(len(prompt), max_tokens)
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
                )
            )
    engine.check_request(sizes, "n" if body.n > 1 or len(prompts) == 1 else param)
    return Prepared(kind, prompts, params, version, body, body.model or base.name)


def _check_length(characters: int, engine: GenerationEngine, param: str) -> None:
    """422 for text so long that no tokenization could fit it in the context (no token is
    longer than the vocabulary's longest), before the tokenizer spends seconds on it."""
    most = engine.info.context_length * engine.max_token_chars
    if characters > most:
        raise InvalidInput(
            f"{param} is {characters} characters, more than the model's context of "
            f"{engine.info.context_length} tokens could ever hold",
            param,
        )


class Generation:
    """One request's sequences running on the engine."""

    def __init__(
        self,
        prepared: Prepared,
        engine: GenerationEngine,
        project: str = "",
        request_id: str | None = None,
    ) -> None:
        self.p = prepared
        self.engine = engine
        self.project = project
        self.request_id = request_id
        self.tokens = TokenTexts(engine.info.tokenizer)
        self.id = ("chatcmpl-" if prepared.kind == "chat" else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        n = prepared.request.n
        self.choices = [_Choice(i, i // n) for i in range(len(prepared.params))]
        self._events: asyncio.Queue[tuple[int, GenEvent | BaseException]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._streams: list[SequenceEvents] = []

    async def start(self) -> list[tuple[int, GenEvent]]:
        """Start every sequence; the events read until each had its first (errors raise here)."""
        wanted = [(self.p.prompts[c.prompt], self.p.params[c.index]) for c in self.choices]
        self._streams = self.engine.submit(
            wanted, self.p.version, self.p.request.mode, self.project, self.request_id
        )
        for c, stream in zip(self.choices, self._streams, strict=True):
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

    async def _pump(self, index: int, stream: SequenceEvents) -> None:
        try:
            async for event in stream:
                self._events.put_nowait((index, event))
        except Exception as exc:  # sent to the reader, who raises or reports it
            self._events.put_nowait((index, exc))
        finally:
            stream.close()

    def cancel(self) -> None:
        """Free every sequence (read or not) and stop reading them."""
        for stream in self._streams:
            stream.close()
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
                    yield self._sse(self._error_body(item))
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
            body["logprobs"] = {"content": self.tokens.chat(tokens)} if want else None
        else:
            body = {"index": c.index, "text": text}
            body["logprobs"] = self.tokens.completion(tokens) if want else None
        body["finish_reason"] = finish
        return body

    @staticmethod
    def _sse(payload: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps(payload) + b"\n\n"

    def _error_body(self, exc: BaseException) -> dict[str, Any]:
        """An error after the stream began, as vLLM sends it: one event with the envelope.
        A service error says what it is; anything else is logged here and stays here."""
        if isinstance(exc, ServiceError):
            error = {"type": exc.error_type, "code": exc.code, "message": exc.message}
            return {"error": {**error, "param": exc.param}}
        log.error("generation failed; request %s", self.request_id or "-", exc_info=exc)
        message = "internal server error; the server logged it under this request's id"
        return {"error": {"type": "server_error", "code": "internal_error", "message": message, "param": None}}  # fmt: skip
