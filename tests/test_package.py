"""What importing the package, or starting the `loraserve` command, sets up before torch loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.startup.launch import base_model_arg, serve_problem

PRINT = "print(os.environ.get('GOMP_SPINCOUNT'), 'torch' in sys.modules)"
SHOW = f"import os, sys; {PRINT}"


def _decoder(tmp_path: Path) -> Path:
    folder = tmp_path / "tiny-llama"
    folder.mkdir()
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _run(code: str, env_update: dict[str, str]) -> str:
    drop = ("GOMP_SPINCOUNT", "LORASERVE_BASE_MODEL", "LORASERVE_CHOSE_GOMP_SPINCOUNT")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(env_update)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.parametrize(
    ("base", "given", "expected"),
    [
        (None, None, "0"),  # the seed model: workers sleep at once
        ("decoder", None, "None"),  # a decoder: libgomp's own spin
        ("SmolLM2-135M-Instruct", None, "None"),  # a packaged .gguf, by name
        ("decoder", "0", "0"),  # the user's value wins either way
        (None, "300000", "300000"),
        ("decoder", "0 chosen", "None"),  # inherited from a parent that chose it: chosen again
        (None, "7 chosen", "0"),
    ],
)
def test_openmp_spin_follows_the_base_unless_the_user_sets_it(
    tmp_path: Path, base: str | None, given: str | None, expected: str
) -> None:
    env = {}
    if given is not None and given.endswith(" chosen"):
        given = env["LORASERVE_CHOSE_GOMP_SPINCOUNT"] = given.split()[0]
    if base is not None:
        env["LORASERVE_BASE_MODEL"] = str(_decoder(tmp_path)) if base == "decoder" else base
    if given is not None:
        env["GOMP_SPINCOUNT"] = given
    assert _run(f"import app; import torch; {SHOW}", env) == f"{expected} True"


def test_the_command_chooses_from_base_model_before_torch_loads(tmp_path: Path) -> None:
    """`loraserve serve --base-model DECODER` drops the no-spin that importing the package set
    from the environment's seed default, and app.cli (which loads torch) comes after."""
    folder = _decoder(tmp_path)
    code = (
        "import sys, types\n"
        f"fake = types.ModuleType('app.cli.main'); fake.main = lambda argv: {PRINT}\n"
        "sys.modules['app.cli.main'] = fake\n"
        f"sys.argv = ['loraserve', 'serve', '--port', '9', '--base-model', {str(folder)!r}]\n"
        "import app.startup.launch; app.startup.launch.main()"
    )
    assert _run("import os\n" + code, {}) == "None False"
    seed = code.replace(f"'--base-model', {str(folder)!r}", "'--host', '127.0.0.1'")
    assert _run("import os\n" + seed, {}) == "0 False"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["serve", "--base-model", "m"], "m"),
        (["--url", "http://x", "serve", "--port", "1", "--base-model=m"], "m"),
        (["serve"], None),
        (["predict", "--base-model", "m"], None),  # not a serve command: nothing to choose
    ],
)
def test_base_model_arg(argv: list[str], expected: str | None) -> None:
    assert base_model_arg(argv) == expected


@pytest.mark.parametrize(
    ("argv", "refused"),
    [
        (["serve", "--base-model", "nope"], True),
        (["--url", "http://x", "serve", "--base-model=nope"], True),
        (["serve", "--base-model", "SmolLM2-135M-Instruct"], False),  # installed here
        (["serve", "--base-model", "nope", "--help"], False),  # the help, not an error
        (["serve", "--ray-address", "ray://head:10001", "--base-model", "nope"], False),
        (["chat", "serve"], False),  # a message, not the serve command
    ],
)
def test_serve_problem(argv: list[str], refused: bool, monkeypatch) -> None:
    monkeypatch.delenv("LORASERVE_BASE_MODEL", raising=False)
    assert (serve_problem(argv) is not None) is refused
