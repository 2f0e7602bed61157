"""HTTP helpers: upload an adapter, make its files, snapshot the store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from httpx import Response

from support.helpers import TINY_SIZES, adapter_files, lora_tensors, peft_config


def upload(
    client: TestClient,
    name: str,
    config: bytes,
    weights: bytes,
    overwrite: bool = False,
    weights_filename: str = "adapter_model.safetensors",
) -> Response:
    return client.post(
        "/v1/adapters",
        params={"overwrite": "true"} if overwrite else None,
        data={"name": name},
        files={
            "config": ("adapter_config.json", config, "application/json"),
            "weights": (weights_filename, weights, "application/octet-stream"),
        },
    )


def make_files(r: int = 4, seed: int = 0, targets=("layer1", "layer2"), **extra: Any):
    config = peft_config(r, 2 * r, targets, **extra)
    tensors = lora_tensors(TINY_SIZES, targets, r, seed)
    return config, tensors, adapter_files(config, tensors)


def snapshot(root: Path) -> list[tuple[str, bytes]]:
    """Every file under the store with its bytes, to prove a failure changed nothing."""
    return sorted(
        (str(p.relative_to(root)), p.read_bytes()) for p in root.rglob("*") if p.is_file()
    )
