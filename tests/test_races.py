"""Uploads, overwrites, deletes and predictions racing on the same names, over real HTTP.

Every successful prediction must equal the longhand reference of one of the versions that name
has held; failures may only be 404 (the name was deleted at that moment), never a 5xx.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import httpx
import torch

from support.helpers import (
    adapter_files,
    lora_tensors,
    peft_config,
    reference_forward,
    write_base_model,
)
from support.server import running_server

SIZES = [16, 8, 4]
NAMES = ["n0", "n1", "n2"]


def test_racing_writes_and_reads_on_the_same_names(tmp_path: Path) -> None:
    base = write_base_model(tmp_path / "base", SIZES)
    targets = ["layer1", "layer2"]
    versions = {}
    for v in range(4):
        config = peft_config(2 + v, 4.0, targets)
        tensors = lora_tensors(SIZES, targets, 2 + v, seed=v)
        versions[v] = (config, tensors, adapter_files(config, tensors))
    x = torch.randn(4, 16)
    expected = [reference_forward(base, x, c, t) for c, t, _ in versions.values()]
    base_only = reference_forward(base, x)
    rng = random.Random(0)
    statuses: list[int] = []
    wrong: list[str] = []

    with running_server(tmp_path, base_model=str(base), batch_wait_ms="5") as server:

        async def writer(client: httpx.AsyncClient) -> None:
            for _ in range(60):
                name, v = rng.choice(NAMES), rng.randrange(len(versions))
                if rng.random() < 0.25:
                    response = await client.delete(f"/v1/adapters/{name}")
                else:
                    files = versions[v][2]
                    response = await client.post(
                        "/v1/adapters",
                        params={"overwrite": "true"},
                        data={"name": name},
                        files={"config": ("c", files[0]), "weights": ("w", files[1])},
                    )
                statuses.append(response.status_code)

        async def reader(client: httpx.AsyncClient) -> None:
            for _ in range(80):
                name = rng.choice(NAMES)
                mode = rng.choice(["auto", "unmerged", "merged"])
                per_row = rng.random() < 0.5
                body = {"inputs": x.tolist(), "mode": mode}
                body.update(
                    {"adapters": [name, None, name, name]} if per_row else {"adapter": name}
                )
                response = await client.post("/v1/predict", json=body)
                statuses.append(response.status_code)
                if response.status_code != 200:
                    continue
                out = torch.tensor(response.json()["outputs"], dtype=torch.float64)
                rows = [0, 2, 3] if per_row else [0, 1, 2, 3]
                if per_row and not torch.allclose(out[1], base_only[1], rtol=1e-4, atol=1e-5):
                    wrong.append(f"{name}: the null row is not the base")
                if not any(
                    torch.allclose(out[rows], e[rows], rtol=1e-4, atol=1e-5) for e in expected
                ):
                    wrong.append(f"{name} {mode}: matches no version of the adapter")

        async def main() -> None:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                await asyncio.gather(
                    *(writer(client) for _ in range(3)), *(reader(client) for _ in range(6))
                )

        asyncio.run(main())
        listed = httpx.get(f"{server.url}/v1/adapters").json()["data"]
        kept = {
            v["version"]
            for a in listed
            for v in httpx.get(f"{server.url}/v1/adapters/{a['name']}/versions").json()["data"]
        }
    assert wrong == []
    assert set(statuses) <= {200, 201, 204, 404}, sorted(set(statuses))
    assert {a["name"] for a in listed} <= set(NAMES)
    # The store holds both files of every version a name still has, and nothing else.
    objects = tmp_path / "adapters" / ".store" / "default"
    stored = {p.name for p in objects.iterdir() if any(p.iterdir())} if objects.exists() else set()
    assert stored == kept
    for version in kept:
        assert sorted(f.name for f in (objects / version).iterdir()) == [
            "adapter_config.json",
            "adapter_model.safetensors",
        ]
