"""Randomized concurrent requests against the real server, each checked against the reference."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import httpx
import torch
from safetensors.torch import load, save

from support.helpers import (
    adapter_files,
    lora_tensors,
    peft_config,
    reference_forward,
    write_base_model,
)
from support.server import running_server

SIZES = [16, 8, 4]


def test_concurrent_mixed_requests_never_get_each_others_rows(tmp_path: Path) -> None:
    base = write_base_model(tmp_path / "base", SIZES)
    with running_server(tmp_path, base_model=str(base), batch_wait_ms="10") as server:
        specs = {}
        with httpx.Client(base_url=server.url) as client:
            for i in range(8):
                targets = [("layer1", "layer2"), ("layer1",), ("layer2",)][i % 3]
                config = peft_config(1 + 2 * i, 4.0, targets)
                tensors = lora_tensors(SIZES, targets, 1 + 2 * i, seed=i)
                files = adapter_files(config, tensors)
                response = client.post(
                    "/v1/adapters",
                    data={"name": f"a{i}"},
                    files={"config": ("c", files[0]), "weights": ("w", files[1])},
                )
                assert response.status_code == 201
                specs[f"a{i}"] = (config, tensors)

        rng = random.Random(1)
        cases = []
        for _ in range(300):
            n = rng.randint(1, 5)
            x = torch.randn(n, 16)
            per_row = rng.random() < 0.6
            names = (
                [rng.choice([*specs, None]) for _ in range(n)]
                if per_row
                else [rng.choice(list(specs))] * n
            )
            cases.append(
                (x, names, per_row, rng.choice(["auto", "unmerged", "merged"]), rng.random() < 0.5)
            )

        async def one(client: httpx.AsyncClient, case) -> torch.Tensor:
            x, names, per_row, mode, binary = case
            if binary:
                meta = {"adapters": json.dumps(names)} if per_row else None
                params = {"mode": mode} if per_row else {"mode": mode, "adapter": names[0]}
                response = await client.post(
                    "/v1/predict",
                    content=save({"inputs": x}, metadata=meta),
                    params=params,
                    headers={
                        "content-type": "application/octet-stream",
                        "accept": "application/octet-stream",
                    },
                )
                assert response.status_code == 200, response.text
                return load(response.content)["outputs"]
            body = {"inputs": x.tolist(), "mode": mode}
            body.update({"adapters": names} if per_row else {"adapter": names[0]})
            response = await client.post("/v1/predict", json=body)
            assert response.status_code == 200, response.text
            return torch.tensor(response.json()["outputs"])

        async def main():
            limits = httpx.Limits(max_connections=64)
            async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=30) as client:
                return await asyncio.gather(*(one(client, c) for c in cases))

        outputs = asyncio.run(main())
    for (x, names, _, _, _), out in zip(cases, outputs, strict=True):
        for row, name in enumerate(names):
            config, tensors = specs[name] if name else (None, None)
            ref = reference_forward(base, x[row : row + 1], config, tensors)
            torch.testing.assert_close(out[row : row + 1].double(), ref, rtol=1e-4, atol=1e-5)
