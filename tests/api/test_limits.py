"""Limits that are settings: adapters on disk, queued jobs, the body deadline (the others live
beside their routes)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import torch
from fastapi.testclient import TestClient
from safetensors.torch import save
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route
from starlette.types import Message

from app.api.limits import BodyGuard
from app.main import create_app
from support.http import make_files, snapshot, upload


def test_adapters_on_disk_are_capped_but_replacing_one_is_fine(settings) -> None:
    with TestClient(create_app(settings.model_copy(update={"max_adapters": 2}))) as client:
        for name in ("a", "b"):
            assert upload(client, name, *make_files()[2]).status_code == 201
        before = snapshot(settings.adapters_dir)
        response = upload(client, "c", *make_files()[2])
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "too_many_adapters"
        assert snapshot(settings.adapters_dir) == before
        assert upload(client, "a", *make_files(seed=4)[2], overwrite=True).status_code == 201
        # A job that would make a third adapter is refused before it is queued.
        data = save({"inputs": torch.randn(8, 16), "targets": torch.randn(8, 4)})
        train = client.post("/v1/datasets", files={"file": ("d", data)}).json()["id"]
        job = client.post(
            "/v1/fine-tuning/jobs", json={"adapter_name": "c", "training_dataset": train}
        )
        assert job.status_code == 413
        assert job.json()["error"]["code"] == "too_many_adapters"
        assert client.get("/v1/fine-tuning/jobs").json()["data"] == []


def test_queued_jobs_are_capped_with_retry_after(settings) -> None:
    with TestClient(create_app(settings.model_copy(update={"max_queued_jobs": 1}))) as client:
        data = save({"inputs": torch.randn(256, 16), "targets": torch.randn(256, 4)})
        train = client.post("/v1/datasets", files={"file": ("d", data)}).json()["id"]
        long = {"epochs": 1000, "batch_size": 1}

        def create(name: str):
            body = {"adapter_name": name, "training_dataset": train, "hyperparameters": long}
            return client.post("/v1/fine-tuning/jobs", json=body)

        running = create("one").json()
        for _ in range(200):  # wait until the worker has taken it, so the queue is empty
            if client.get(f"/v1/fine-tuning/jobs/{running['id']}").json()["status"] == "running":
                break
            time.sleep(0.02)
        assert create("two").status_code == 201  # queued
        refused = create("three")
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "too_many_requests"
        assert refused.headers["retry-after"] == "10"
        for job in client.get("/v1/fine-tuning/jobs").json()["data"]:
            client.post(f"/v1/fine-tuning/jobs/{job['id']}/cancel")


def _slow_stream_app(timeout_s: float) -> BodyGuard:
    """A route that reads its body, then streams for longer than the body's deadline."""

    async def slow(request: Request) -> StreamingResponse:
        await request.body()

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(5):
                await asyncio.sleep(timeout_s / 2)
                yield f"chunk {i}\n".encode()

        return StreamingResponse(chunks(), media_type="text/plain")

    app = Starlette(routes=[Route("/stream", slow, methods=["POST"])])
    return BodyGuard(app, limit_for=lambda *_: 1024, timeout_s=timeout_s)


def test_a_stream_outlives_the_body_deadline() -> None:
    # The streamed answer listens for a disconnect through receive() as long as it runs; the
    # body's deadline must end with the body, or every stream dies BODY_TIMEOUT_S in.
    with TestClient(_slow_stream_app(timeout_s=0.2)) as client:
        answer = client.post("/stream", content=b"{}")
    assert answer.status_code == 200
    assert answer.text == "".join(f"chunk {i}\n" for i in range(5))


def test_a_body_that_arrives_too_slowly_is_still_refused() -> None:
    parts = [b"{", b"}"]

    async def trickle() -> Message:
        await asyncio.sleep(0.5)  # each part, over the 0.2 s the whole body has
        body = parts.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(parts)}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/stream",
        "headers": [],
        "query_string": b"",
    }
    asyncio.run(_slow_stream_app(timeout_s=0.2)(scope, trickle, send))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 408
