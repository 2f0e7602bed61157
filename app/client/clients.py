"""The sync and async clients: the operations over an httpx client, and a job's events."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx

from app.client.operations import Operations
from app.client.wire import (
    DONE,
    event_text,
    headers_for,
    raise_for_error,
    unfinished,
)


class Client(Operations):
    """Blocking client."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 120, **kw: Any):
        self.http = httpx.Client(
            base_url=base_url, headers=headers_for(api_key), timeout=timeout, **kw
        )

    @classmethod
    def over(cls, http: httpx.Client) -> Client:
        """A client on an httpx client made elsewhere (a test's in-process client, say)."""
        client = cls.__new__(cls)
        client.http = http
        return client

    def _request(
        self, method: str, path: str, read: Callable[[httpx.Response], Any], **kw: Any
    ) -> Any:
        return read(raise_for_error(self.http.request(method, path, **kw)))

    def _stream(self, path: str, body: dict[str, Any]) -> Iterator[str]:
        # A generator: the request goes out at the first next(), and closes with the iterator.
        with self.http.stream("POST", path, json=body) as response:
            if not response.is_success:
                response.read()
                raise_for_error(response)
            for line in response.iter_lines():
                text = event_text(line, response.status_code)
                if text is None:
                    return
                if text:
                    yield text
        raise unfinished(response.status_code)

    def watch(
        self, job_id: str, poll_s: float = 0.5
    ) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
        """The job and the events it added since the last look, every `poll_s` seconds, until
        it has ended and every event has been read. The job is read before its events: a job
        seen ended has recorded all of them."""
        after = None
        while True:
            job = self.get_job(job_id)
            page = self.job_events(job_id, after=after)
            after = page["data"][-1]["id"] if page["data"] else after
            yield job, page["data"]
            if not page["has_more"]:
                if job["status"] in DONE:
                    return
                time.sleep(poll_s)

    def follow(self, job_id: str, poll_s: float = 0.5) -> Iterator[dict[str, Any]]:
        """Each event of a job as it comes, until the job has ended."""
        for _, events in self.watch(job_id, poll_s):
            yield from events

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(Operations):
    """asyncio client: every operation returns a coroutine."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 120, **kw: Any):
        self.http = httpx.AsyncClient(
            base_url=base_url, headers=headers_for(api_key), timeout=timeout, **kw
        )

    async def _request(
        self, method: str, path: str, read: Callable[[httpx.Response], Any], **kw: Any
    ) -> Any:
        return read(raise_for_error(await self.http.request(method, path, **kw)))

    async def _stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[str]:
        async with self.http.stream("POST", path, json=body) as response:
            if not response.is_success:
                await response.aread()
                raise_for_error(response)
            async for line in response.aiter_lines():
                text = event_text(line, response.status_code)
                if text is None:
                    return
                if text:
                    yield text
        raise unfinished(response.status_code)

    async def watch(
        self, job_id: str, poll_s: float = 0.5
    ) -> AsyncIterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
        """As Client.watch."""
        after = None
        while True:
            job = await self.get_job(job_id)
            page = await self.job_events(job_id, after=after)
            after = page["data"][-1]["id"] if page["data"] else after
            yield job, page["data"]
            if not page["has_more"]:
                if job["status"] in DONE:
                    return
                await asyncio.sleep(poll_s)

    async def follow(self, job_id: str, poll_s: float = 0.5) -> AsyncIterator[dict[str, Any]]:
        """Each event of a job as it comes, until the job has ended."""
        async for _, events in self.watch(job_id, poll_s):
            for event in events:
                yield event

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
