"""The shipped Serve configs are valid and size every deployment the application has."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from app.deploy import ray as deployments
from support.server import ROOT

CONFIGS = sorted((ROOT / "deploy" / "ray").glob("serve*.yaml"))
NAMES = {
    deployments._deployment(d).name
    for d in (deployments.Ingress, deployments.Predictor, deployments.Board, deployments.Trainer)
}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_a_shipped_config_is_valid_and_sized(path: Path) -> None:
    config = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    (application,) = config.applications
    assert application.import_path == "app.deploy.ray:build"
    deployments.build(application.args)  # the args it passes are the builder's
    sized = {d.name: d for d in application.deployments}
    assert set(sized) <= NAMES
    ingress, predictor = sized["Ingress"], sized["Predictor"]
    # Ray's default of 5 ongoing requests starves an ingress and caps a batch at 5 rows.
    assert ingress.max_ongoing_requests >= 256 and predictor.max_ongoing_requests >= 32
    for d in (ingress, predictor):
        assert d.autoscaling_config["min_replicas"] >= 1
        assert d.autoscaling_config["target_ongoing_requests"] > 5
    assert ingress.ray_actor_options.resources == {"ingress": 0.01}
    gpus = predictor.ray_actor_options.num_gpus or 0
    assert gpus == (1 if "gpu" in path.name else 0)


def test_both_configs_ship() -> None:
    assert [p.name for p in CONFIGS] == ["serve-gpu.yaml", "serve.yaml"]
