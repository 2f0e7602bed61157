"""vLLM's CPU backend as the peer of bench/generate.py --peer vllm, run from its own virtual
environment (../shared/peers/vllm-cpu.sh installs it; the project never imports vllm).

Started as that script's header says for 2 cores, tuned: VLLM_CPU_KVCACHE_SPACE=2,
VLLM_CPU_OMP_THREADS_BIND=0-1 (every core to inference), VLLM_CPU_NUM_OF_RESERVED_CPU=0,
tcmalloc and Intel's OpenMP preloaded, and
  vllm serve MODEL_DIR --served-model-name NAME --dtype DTYPE --max-model-len 2048
    --enable-lora --max-lora-rank 8 --max-loras 16 --max-cpu-loras 16 --lora-modules a00=DIR ...
Its output goes to a log file; a start that fails or takes too long raises with the log's tail.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

TCMALLOC = Path("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")
INSTALL = "bash ../shared/peers/vllm-cpu.sh VENV (from the repository root)"
TUNED = {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_OMP_THREADS_BIND": "0-1",
         "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}  # fmt: skip
# Nothing leaves the machine: no usage statistics, no Hub look-ups.
OFFLINE = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}  # fmt: skip


def check_install(venv: Path) -> None:
    """Raise with what to do when the peer or the tuned setup's libraries are missing."""
    if not (venv / "bin" / "vllm").exists():
        raise SystemExit(f"--peer vllm: no {venv}/bin/vllm; install the peer: {INSTALL}")
    if not TCMALLOC.exists():
        raise SystemExit(f"--peer vllm: no {TCMALLOC}: apt-get install libtcmalloc-minimal4")
    if not (venv / "lib" / "libiomp5.so").exists():
        raise SystemExit(f"--peer vllm: no {venv}/lib/libiomp5.so; reinstall the peer: {INSTALL}")


def model_folder(folder: Path, dest: Path) -> Path:
    """`folder` as vLLM can load it: every file linked, config.json copied without the
    "quantization_config" a folder converted from a .gguf may carry (vLLM would then look for
    a quantized checkpoint)."""
    config = json.loads((folder / "config.json").read_text())
    if "quantization_config" not in config:
        return folder
    dest.mkdir(parents=True, exist_ok=True)
    for f in folder.iterdir():
        if f.name != "config.json" and not (dest / f.name).exists():
            (dest / f.name).symlink_to(f.resolve())
    del config["quantization_config"]
    (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return dest


def command(venv: Path, folder: Path, name: str, dtype: str, adapters: dict[str, Path],
            port: int) -> list[str]:  # fmt: skip
    lora = [f"{n}={p}" for n, p in adapters.items()]
    return [str(venv / "bin" / "vllm"), "serve", str(folder), "--served-model-name", name,
            "--dtype", dtype, "--max-model-len", "2048", "--enable-lora", "--max-lora-rank", "8",
            "--max-loras", str(len(adapters)), "--max-cpu-loras", str(len(adapters)),
            "--lora-modules", *lora, "--host", "127.0.0.1", "--port", str(port),
            "--disable-uvicorn-access-log"]  # fmt: skip


def _tail(log: Path, n: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-n:])


@contextmanager
def vllm_server(venv: Path, folder: Path, name: str, dtype: str, adapters: dict[str, Path],
                log: Path, ready_s: float = 900) -> Iterator[str]:  # fmt: skip
    """A vLLM server alone in its own process group, ready when /v1/models lists the base and
    every adapter; its URL. On exit the group gets SIGTERM, and SIGKILL after 60 s."""
    check_install(venv)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    preload = f"{TCMALLOC}:{venv / 'lib' / 'libiomp5.so'}"
    env = {**os.environ, **TUNED, **OFFLINE, "LD_PRELOAD": preload}
    url = f"http://127.0.0.1:{port}"
    with log.open("w") as out:
        proc = subprocess.Popen(command(venv, folder, name, dtype, adapters, port), env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + ready_s
        want = {name, *adapters}
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vLLM exited ({proc.returncode}) while starting; {log}:\n"
                                   + _tail(log))  # fmt: skip
            if time.monotonic() > deadline:
                raise RuntimeError(f"vLLM not ready after {ready_s:.0f} s; {log}:\n" + _tail(log))
            try:
                answer = httpx.get(f"{url}/v1/models", timeout=5)
                if answer.status_code == 200:
                    have = {m["id"] for m in answer.json()["data"]}
                    if want <= have:
                        break
                    raise RuntimeError(f"vLLM serves {sorted(have)}, not {sorted(want - have)}")
            except httpx.TransportError:
                pass
            time.sleep(1)
        yield url
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (its engine runs in a child), SIGKILL if need be."""
    for sig, wait_s in ((signal.SIGTERM, 60), (signal.SIGKILL, 30)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; children it left in the group get the same signal.
        try:
            os.killpg(proc.pid, sig)
            time.sleep(1)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return


def errors_in(log: Path) -> list[str]:
    """The log's lines that report an error (empty when the server ran clean)."""
    lines = log.read_text(errors="replace").splitlines()
    return [line for line in lines if " ERROR " in line or line.startswith("Traceback")]
