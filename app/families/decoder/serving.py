"""The rules of /v1/completions and /v1/chat/completions: OpenAI's answers out.

Every choice of every prompt is one sequence of the generation engine. A streamed answer is
sent only once each sequence has its first event (so a full queue is still an HTTP 503, not an
error inside a 200 stream); later, chunks go out as tokens arrive. A client that goes away
closes the sequences here, which frees them: at once while they wait, at the engine's next
step once they run.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from app.api.errors import envelope, service_envelope
from app.errors import ServiceError
from app.families.decoder.generate.engine import GenerationEngine, GenEvent, SequenceEvents
from app.families.decoder.generate.sampling import Choice
from app.families.decoder.logprobs import TokenTexts
from app.families.decoder.prompts import Prepared

log = logging.getLogger("app.families.decoder.generate")


@dataclass
class _Choice:
    index: int
    prompt: int  # which prompt it answers
    text: str = ""
    tokens: list[Choice] = field(default_factory=list)
    finish_reason: str | None = None


class Generation:
    """One request's sequences running on the engine."""

    def __init__(
        self,
        prepared: Prepared,
        engine: GenerationEngine,
        project: str = "",
        request_id: str | None = None,
        on_done: Callable[[dict[str, int]], None] = lambda usage: None,
    ) -> None:
        self.p = prepared
        self.on_done = on_done  # told the usage once every sequence has finished
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
        self.on_done(self.usage())
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
            self.on_done(self.usage())
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
            return service_envelope(exc)
        log.error("generation failed; request %s", self.request_id or "-", exc_info=exc)
        message = "internal server error; the server logged it under this request's id"
        return envelope("internal_error", message, error_type="server_error")
