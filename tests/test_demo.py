"""The reference example, reduced in size, through the HTTP API of the seed model."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from app.demo import run_demo
from app.main import create_app
from app.settings import Settings


def test_demo_brings_the_shifted_task_back_near_zero(tmp_path: Path) -> None:
    settings = Settings(
        adapters_dir=tmp_path / "adapters", data_dir=tmp_path / "data", device="cpu"
    )
    lines: list[str] = []
    with TestClient(create_app(settings)) as client:
        results = run_demo(
            client, rows=2000, validation_rows=200, epochs=15, adapter_name="demo", out=lines.append
        )
        assert client.get("/v1/adapters/demo").json()["source"] == "training"
    assert results["base_mse"] > 500
    assert results["unmerged_mse"] < 2
    assert (
        abs(results["merged_mse"] - results["unmerged_mse"]) < 1e-3 * results["unmerged_mse"] + 1e-4
    )
    assert any("epoch  15" in line for line in lines)
