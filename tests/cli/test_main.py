"""The `loraserve` command: settings for `serve`, and one `error:` line for every failure."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import types
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save_file

import app.cli.main as app_cli
from app.cli.main import EXIT_SERVICE, EXIT_USAGE, main
from app.main import create_app
from app.settings import Settings
from app.startup.basekind import PACKAGED_BASES
from support.helpers import adapter_files, lora_tensors, peft_config, write_base_model


@pytest.fixture
def closed_url() -> str:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def served(monkeypatch) -> list[Settings]:
    """`app.server.run` replaced by a recorder, so `serve` returns at once."""
    calls: list[Settings] = []
    monkeypatch.setitem(sys.modules, "app.server", types.SimpleNamespace(run=calls.append))
    for name in ("LORASERVE_HOST", "LORASERVE_PORT", "UVICORN_HOST", "UVICORN_PORT"):
        monkeypatch.delenv(name, raising=False)
    return calls


def fails(argv: list[str], capsys) -> tuple[int, str]:
    """Run the CLI expecting failure: its exit status and its stderr."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err
    assert isinstance(exited.value.code, int)
    return exited.value.code, err


def assert_one_error_line(err: str, *words: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], (word, lines[0])


def test_serve_takes_host_and_port_from_uvicorn_variables(served, monkeypatch) -> None:
    monkeypatch.setenv("UVICORN_HOST", "0.0.0.0")
    monkeypatch.setenv("UVICORN_PORT", "8123")
    monkeypatch.setenv("LORASERVE_MAX_RANK", "7")
    main(["serve"])
    (settings,) = served
    assert (settings.host, settings.port, settings.max_rank) == ("0.0.0.0", 8123, 7)


def test_serve_options_win_over_the_environment(served, monkeypatch) -> None:
    monkeypatch.setenv("LORASERVE_PORT", "8123")
    main(["serve", "--host", "127.0.0.2", "--port", "9001"])
    (settings,) = served
    assert (settings.host, settings.port) == ("127.0.0.2", 9001)


def test_serve_base_model_wins_over_the_environment(served, monkeypatch) -> None:
    monkeypatch.setenv("LORASERVE_BASE_MODEL", "/elsewhere")
    main(["serve", "--base-model", "all-MiniLM-L6-v2"])
    assert served[0].base_model == Path("all-MiniLM-L6-v2")


def test_serve_defaults_to_localhost_8000(served) -> None:
    main(["serve"])
    assert (served[0].host, served[0].port) == ("127.0.0.1", 8000)


def test_serve_with_a_malformed_setting_is_a_usage_error(served, monkeypatch, capsys) -> None:
    monkeypatch.setenv("UVICORN_PORT", "eighty")
    code, err = fails(["serve"], capsys)
    assert code == EXIT_USAGE and not served
    assert_one_error_line(err, "invalid settings", "PORT")


def test_serve_ray_without_ray_installed_says_what_to_install(served, monkeypatch, capsys) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    code, err = fails(["serve", "--ray"], capsys)
    assert code == EXIT_USAGE and not served
    assert_one_error_line(err, "pip install 'loraserve[ray]'")


def test_serve_ray_hands_its_options_to_the_application(served, monkeypatch) -> None:
    calls: list[tuple] = []
    monkeypatch.setattr("app.deploy.local.run", lambda *a: calls.append(a))
    main(["serve", "--ray", "--port", "9002", "--replicas", "3", "--adapters-per-replica", "8"])
    ((settings, address, args),) = calls
    assert (settings.port, address, not served) == (9002, None, True)
    assert args == {"predictors": 3, "trainers": 1, "adapters_per_replica": 8}


@pytest.mark.parametrize(
    "argv",
    [
        ["adapters", "list"],
        ["adapters", "delete", "x"],
        ["jobs", "list"],
        ["demo", "--rows", "10"],
    ],
)
def test_a_service_that_is_down_is_one_error_line(argv, closed_url, capsys) -> None:
    code, err = fails(["--url", closed_url, *argv], capsys)
    assert code == EXIT_SERVICE
    assert_one_error_line(err, "cannot reach the service", closed_url)


def test_predict_with_the_service_down(closed_url, tmp_path: Path, capsys) -> None:
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps({"inputs": [[0.0] * 4]}))
    code, err = fails(["--url", closed_url, "predict", "--inputs", str(rows)], capsys)
    assert code == EXIT_SERVICE
    assert_one_error_line(err, "cannot reach the service")


def test_a_url_that_is_not_http_is_a_usage_error(capsys) -> None:
    code, err = fails(["--url", "ftp://127.0.0.1:1", "adapters", "list"], capsys)
    assert code == EXIT_USAGE
    assert_one_error_line(err, "bad --url")


def write_inputs(folder: Path) -> dict[str, Path]:
    """Good and bad input files for `predict` and `train`."""
    files = {
        "rows.json": json.dumps([[1.0, 2.0], [3.0]]),  # ragged
        "words.json": json.dumps({"inputs": [["a", "b"]]}),
        "flat.json": json.dumps({"inputs": [1.0, 2.0]}),
        "broken.json": '{"inputs": [[1.0,',
        "binary.json": b"\xff\xfe\x00",
        "garbage.safetensors": b"not a safetensors file at all",
    }
    for name, content in files.items():
        path = folder / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    save_file({"x": torch.zeros(2, 3)}, folder / "no-inputs.safetensors")
    save_file({"inputs": torch.zeros(2, 3)}, folder / "no-targets.safetensors")
    save_file({"inputs": torch.zeros(3), "targets": torch.zeros(3)}, folder / "1d.safetensors")
    save_file(
        {"inputs": torch.zeros(2, 3), "targets": torch.zeros(2, 1)}, folder / "train.safetensors"
    )
    (folder / "a-folder.json").mkdir()
    return {p.name: p for p in folder.iterdir()}


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["predict", "--inputs", "{missing}/rows.json"], ["cannot read", "No such file"]),
        (["predict", "--inputs", "{missing}/rows.safetensors"], ["cannot read"]),
        (["predict", "--inputs", "{files}/a-folder.json"], ["cannot read"]),
        (["predict", "--inputs", "{files}/rows.json"], ["rows of equal length"]),
        (["predict", "--inputs", "{files}/words.json"], ["expected"]),
        (["predict", "--inputs", "{files}/flat.json"], ["expected"]),
        (["predict", "--inputs", "{files}/broken.json"], ["is not JSON"]),
        (["predict", "--inputs", "{files}/binary.json"], ["is not JSON"]),
        (["predict", "--inputs", "{files}/garbage.safetensors"], ["not a safetensors file"]),
        (["predict", "--inputs", "{files}/no-inputs.safetensors"], ["no tensor 'inputs'"]),
        (["train", "t", "--data", "{missing}/train.safetensors"], ["cannot read"]),
        (["train", "t", "--data", "{files}/no-targets.safetensors"], ["no tensor 'targets'"]),
        (["train", "t", "--data", "{files}/1d.safetensors"], ["(rows, width)"]),
        (
            ["train", "t", "--data", "{files}/train.safetensors", "--validation", "{missing}/v"],
            ["cannot read"],
        ),
        (["adapters", "upload", "a", "{missing}/peft"], ["not a PEFT adapter folder"]),
        (["adapters", "upload", "a", "{files}"], ["adapter_config.json"]),
    ],
)
def test_a_missing_or_malformed_file_is_a_usage_error(
    argv, words, closed_url, tmp_path: Path, capsys
) -> None:
    # The service is down: a command that read its files first fails on them, with status 2.
    (tmp_path / "files").mkdir()
    write_inputs(tmp_path / "files")
    paths = {"missing": tmp_path / "missing", "files": tmp_path / "files"}
    argv = [a.format(**paths) for a in argv]
    code, err = fails(["--url", closed_url, *argv], capsys)
    assert code == EXIT_USAGE
    assert_one_error_line(err, *words)


def test_adapters_list_shows_a_broken_adapter_readably(tmp_path: Path, monkeypatch, capsys) -> None:
    """An adapter made for another base (it targets a layer this base lacks) is listed
    with status broken and '-' where its rank, alpha and modules cannot be known."""
    state = {"adapters_dir": tmp_path / "adapters", "data_dir": tmp_path / "data", "device": "cpu"}
    two_layers = Settings(base_model=write_base_model(tmp_path / "two", [16, 8, 4]), **state)
    one_layer = Settings(base_model=write_base_model(tmp_path / "one", [16, 8]), **state)
    config = peft_config(2, 4, ["layer2"])
    weights = adapter_files(config, lora_tensors([16, 8, 4], ["layer2"], 2, 0))
    names = {"config": ("c.json", weights[0]), "weights": ("w.safetensors", weights[1])}
    with TestClient(create_app(two_layers)) as c:
        assert c.post("/v1/adapters", data={"name": "two-layer"}, files=names).status_code == 201
    with TestClient(create_app(one_layer)) as c:
        listing = c.get("/v1/adapters")
    (broken,) = listing.json()["data"]
    assert broken["status"] == "broken" and broken["rank"] is None  # what the CLI is given

    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/adapters"
        return httpx.Response(200, content=listing.content, headers=listing.headers)

    real_client = app_cli.Client
    monkeypatch.setattr(
        app_cli,
        "Client",
        lambda url, api_key=None: real_client(url, api_key, transport=httpx.MockTransport(answer)),
    )
    capsys.readouterr()  # the apps' log lines
    main(["--url", "http://127.0.0.1:9", "adapters", "list"])
    out = capsys.readouterr()
    header, row = out.out.splitlines()
    assert header.split()[:3] == ["name", "status", "rank"]
    assert row.split()[:6] == ["two-layer", "broken", "-", "-", "upload", str(broken["size_bytes"])]
    assert broken["error"]["code"] in row and not out.err


def loraserve(argv: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The installed `loraserve` command, its state in tmp_path, no base model set by the
    environment unless given."""
    drop = ("LORASERVE_BASE_MODEL", "LORASERVE_HOST", "LORASERVE_PORT", "UVICORN_PORT")
    clean = {k: v for k, v in os.environ.items() if k not in drop}
    clean |= {"LORASERVE_ADAPTERS_DIR": str(tmp_path / "adapters")}
    clean |= {"LORASERVE_DATA_DIR": str(tmp_path / "data"), **env}
    command = [str(Path(sys.executable).parent / "loraserve"), *argv]
    return subprocess.run(command, capture_output=True, text=True, env=clean, timeout=120)


def test_serve_an_unknown_base_model_names_the_packaged_ones(tmp_path: Path) -> None:
    for argv, env in ((["--base-model", "nope"], {}), ([], {"LORASERVE_BASE_MODEL": "nope"})):
        done = loraserve(["serve", "--port", "1", *argv], tmp_path, **env)
        assert done.returncode == EXIT_USAGE
        assert_one_error_line(done.stderr, "'nope'", "folder", ".gguf", *PACKAGED_BASES)
        assert not done.stdout


def test_serve_refuses_an_unknown_base_model_before_torch_loads() -> None:
    code = (
        "import sys\n"
        "sys.argv = ['loraserve', 'serve', '--base-model', 'nope']\n"
        "import app.startup.launch\n"
        "try:\n    app.startup.launch.main()\n"
        "except SystemExit as exited:\n    print(exited.code, 'torch' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k != "LORASERVE_BASE_MODEL"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert (done.stdout.split(), done.returncode) == (["2", "False"], 0), done.stderr


def test_serve_an_unknown_base_model_in_process(served, capsys) -> None:
    """`python -m app.cli serve` (no launcher) refuses it the same way."""
    code, err = fails(["serve", "--base-model", "nope"], capsys)
    assert code == EXIT_USAGE and not served
    assert_one_error_line(err, "'nope'", *PACKAGED_BASES)


def test_serve_on_a_taken_port_says_so_before_loading_the_model(tmp_path: Path) -> None:
    # A base whose loading fails loudly: the port must be found taken before it is read.
    unloadable = tmp_path / "unloadable"
    unloadable.mkdir()
    (unloadable / "config.json").write_text("{not json")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = loraserve(
            ["serve", "--host", "127.0.0.1", "--port", str(port), "--base-model", str(unloadable)],
            tmp_path,
        )
    assert done.returncode == EXIT_USAGE, done.stderr
    assert_one_error_line(
        done.stderr, f"cannot listen on 127.0.0.1:{port}", "choose another --port"
    )
