"""What the service benchmarks share: start a server on 127.0.0.1, and drive it with wrk.

wrk (Debian's `wrk` package) is a C load generator: one thread of it keeps dozens of connections
busy for a fraction of a core, so the figures measure the server, not the client.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from support.server import free_port, launched  # noqa: E402

# Runs once per wrk thread at the end; prints one JSON line the caller parses.
_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\n{"requests": %d, "duration_us": %d, "non_2xx": %d, "socket_errors": %d, '
    .. '"p50_us": %d, "p90_us": %d, "p99_us": %d}\\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
"""


@contextmanager
def server(argv: Sequence[str], env: dict[str, str], ready_s: float = 180) -> Iterator[str]:
    """`argv` + `--host 127.0.0.1 --port P` (a uvicorn app or `loraserve serve`); its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with launched([*argv, "--host", "127.0.0.1", "--port", str(port)], url, env, ready_s):
        yield url


def gguf_env(run: Path, gguf: Path, folder: Path) -> dict[str, str]:
    """The settings of a server on `gguf` whose data lives under `run`, with the conversion
    already in `folder` linked in, so that it does not convert the file again."""
    (run / "data" / "models").mkdir(parents=True)
    (run / "data" / "models" / folder.name).symlink_to(folder)
    return {"LORASERVE_BASE_MODEL": str(gguf), "LORASERVE_DATA_DIR": str(run / "data"),
            "LORASERVE_ADAPTERS_DIR": str(run / "store")}  # fmt: skip


def bin_path(name: str) -> str:
    """A console script of this virtual environment."""
    return str(Path(sys.executable).parent / name)


def wrk_exe() -> str:
    exe = shutil.which("wrk")
    assert exe, "wrk is not installed (apt-get install wrk)"
    return exe


def lua_strings(bodies: Sequence[bytes]) -> str:
    """`bodies` as the items of a Lua table, long-bracket quoted (JSON needs no escaping there)."""
    return ",\n".join(f"[==[{b.decode()}]==]" for b in bodies)


def wrk_script(path: str, bodies: Sequence[bytes], content_type: str = "application/json") -> str:
    """A wrk Lua script that POSTs `bodies` in turn, each connection starting at its own offset."""
    return f"""
local bodies = {{
{lua_strings(bodies)}
}}
local headers = {{["Content-Type"] = "{content_type}"}}
local i = 0
init = function(args) i = math.random(#bodies) end
request = function()
  i = i % #bodies + 1
  return wrk.format("POST", "{path}", headers, bodies[i])
end
{_DONE}"""


def wrk_file_script(path: str, file: Path, content_type: str) -> str:
    """A wrk Lua script that POSTs one file's bytes (binary bodies, too big to inline) again and
    again, asking for the same type back, and prints each answer's Server-Timing model time."""
    return f"""
local f = assert(io.open([==[{file}]==], "rb"))
local body = f:read("*a")
f:close()
local headers = {{["Content-Type"] = "{content_type}", ["Accept"] = "{content_type}"}}
request = function() return wrk.format("POST", "{path}", headers, body) end
response = function(status, headers, body)
  local timing = headers["Server-Timing"] or headers["server-timing"] or ""
  local model = string.match(timing, "model;dur=([%d%.]+)")
  if model then io.write("model_ms " .. model .. "\\n") end
end
{_DONE}"""


def wrk_get_script() -> str:
    """wrk's default GET of the URL, with the JSON summary line."""
    return _DONE


def wrk(url: str, script: str, connections: int, duration_s: float, threads: int = 1) -> dict:
    """Run wrk; requests/s, latency percentiles (ms), and every failed request counted."""
    exe = wrk_exe()
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    try:
        out = subprocess.run(
            [exe, "-t", str(threads), "-c", str(connections), "-d", f"{round(duration_s)}s",
             "--timeout", "60s", "-s", f.name, url],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    finally:
        os.unlink(f.name)
    lines = out.strip().splitlines()
    stats = json.loads(lines[-1])
    seconds = stats["duration_us"] / 1e6
    model = sorted(float(line.split()[1]) for line in lines if line.startswith("model_ms "))
    return {
        **({"model_p50_ms": model[len(model) // 2]} if model else {}),
        "requests_per_s": stats["requests"] / seconds,
        "requests": stats["requests"],
        "failed": stats["non_2xx"] + stats["socket_errors"],
        **{f"p{q}_ms": stats[f"p{q}_us"] / 1000 for q in (50, 90, 99)},
    }
