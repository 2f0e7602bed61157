"""The reference example, reduced in size, through the HTTP API of the seed model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.cli.examples.seed import main as demo_main
from app.cli.examples.seed import run_demo
from app.cli.main import main as cli_main
from app.client import Client
from app.main import create_app
from app.settings import Settings
from support.server import Server, running_server


def test_demo_brings_the_shifted_task_back_near_zero(tmp_path: Path) -> None:
    settings = Settings(
        adapters_dir=tmp_path / "adapters", data_dir=tmp_path / "data", device="cpu"
    )
    lines: list[str] = []
    with TestClient(create_app(settings)) as client:
        results = run_demo(
            Client.over(client),
            rows=2000,
            validation_rows=200,
            epochs=15,
            adapter_name="demo",
            out=lines.append,
        )
        assert client.get("/v1/adapters/demo").json()["source"] == "training"
    assert results["base_mse"] > 500
    assert results["unmerged_mse"] < 2
    assert (
        abs(results["merged_mse"] - results["unmerged_mse"]) < 1e-3 * results["unmerged_mse"] + 1e-4
    )
    assert any("epoch  15" in line for line in lines)


ADMIN = "demo-admin-key"
SMALL = ["--rows", "256", "--validation-rows", "64", "--epochs", "2", "--target-mse", "1e9"]


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The real server on the seed model, with auth on."""
    with running_server(tmp_path_factory.mktemp("demo"), admin_keys=ADMIN) as server:
        yield server


def test_demo_takes_its_key_from_the_environment(secured: Server, monkeypatch, capsys) -> None:
    monkeypatch.setenv("LORASERVE_API_KEY", ADMIN)
    demo_main(["--url", secured.url, "--adapter-name", "demo-env", *SMALL])
    out = capsys.readouterr().out
    assert "base model MSE" in out and "adapter MSE on the new data, merged" in out


def test_loraserve_demo_passes_its_key(secured: Server, monkeypatch, capsys) -> None:
    monkeypatch.delenv("LORASERVE_API_KEY", raising=False)
    cli_main(
        ["--url", secured.url, "--api-key", ADMIN, "demo", "--adapter-name", "demo-cli", *SMALL]
    )
    assert "adapter MSE on the new data, merged" in capsys.readouterr().out


def test_demo_without_a_key_is_one_error_line(secured: Server, monkeypatch, capsys) -> None:
    monkeypatch.delenv("LORASERVE_API_KEY", raising=False)
    with pytest.raises(SystemExit) as exited:
        demo_main(["--url", secured.url, *SMALL])
    assert exited.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: 401 ") and len(err.splitlines()) == 1
