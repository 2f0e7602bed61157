"""One Ray cluster per pytest run, in this process, every port on 127.0.0.1; the Serve
application deployed once on it, on PostgreSQL and an S3 server, with keys on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from ray import serve
from ray.cluster_utils import Cluster

from app.deploy.ray import APP_NAME, build
from support.helpers import write_base_model
from support.ray_app import ADMIN_KEY, CAPACITY, NODE, READ_KEY, TTL_MS, RayApp
from support.server import free_port
from support.services import BUCKET, new_database


@pytest.fixture(scope="session")
def ray_cluster(s3_endpoint: str) -> Iterator[Cluster]:
    """Started after the S3 server, whose credentials the replicas inherit from our environment."""
    # The head alone has the `ingress` resource: only its proxy takes clients (HeadOnly), and
    # the node the two-node test removes must not hold the ingress.
    head = {"num_cpus": 2, "resources": {"ingress": 1}, **NODE}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield cluster
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


def app_settings(tmp: Path, database_url: str, s3_endpoint: str, base: Path) -> dict[str, Any]:
    return {
        "base_model": str(base),
        "adapters_dir": str(tmp / "adapters"),
        "data_dir": str(tmp / "data"),
        "database_url": database_url,
        "store_url": f"s3://{BUCKET}/{tmp.name}",
        "s3_endpoint_url": s3_endpoint,
        "registry_ttl_ms": TTL_MS,
        "job_lease_ms": 2000,
        "admin_keys": [ADMIN_KEY],
        "api_keys": [READ_KEY],
        "device": "cpu",
    }


@pytest.fixture(scope="session")
def ray_app(
    ray_cluster: Cluster,
    tmp_path_factory: pytest.TempPathFactory,
    postgres_server_url: str,
    s3_endpoint: str,
) -> RayApp:
    """1 ingress and 2 predictor replicas (and a trainer) behind Serve's proxy."""
    tmp = tmp_path_factory.mktemp("ray")
    base = write_base_model(tmp / "base")
    settings = app_settings(tmp, new_database(postgres_server_url), s3_endpoint, base)
    port = free_port()
    # Nodes simulated on one machine would share the port: one proxy, on the head.
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    args = {
        "settings": settings,
        "predictors": 2,
        "max_predictors": 2,
        "adapters_per_replica": CAPACITY,
        "predictor_cpus": 0.5,
        "ingress_cpus": 0.25,
        "ingress_resources": {"ingress": 0.01},
    }
    serve.run(build(args), name=APP_NAME, route_prefix="/")
    return RayApp(f"http://127.0.0.1:{port}", base, settings, ray_cluster)
