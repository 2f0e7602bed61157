"""The Ray application the deploy tests start: its keys, its settings, how to reach it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.cluster_utils import Cluster

ADMIN_KEY = "ray-admin-key-0123456789"
READ_KEY = "ray-read-key-0123456789"
TTL_MS = 500
CAPACITY = 4  # adapters per predictor replica
NODE = {"node_ip_address": "127.0.0.1", "include_dashboard": False}


@dataclass
class RayApp:
    url: str
    base: Path
    settings: dict[str, Any]  # the overrides every replica runs with
    cluster: Cluster

    def headers(self, key: str = ADMIN_KEY) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}
