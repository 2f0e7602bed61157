"""The Ray Serve path against one process, as users start them, driven by wrk on 127.0.0.1.

Run: .venv/bin/python bench/ray.py [--seconds 10]
Both servers run on the embedded seed model with default settings: `loraserve serve` and
`loraserve serve --ray --replicas 2 --adapters-per-replica 48` (a local Ray cluster, SQLite and a
folder), one after the other, never together. It measures:
- added latency: one-row predictions naming an adapter at c=1, p50 and p99, Ray minus one
  process (targets: at most 5 ms added at p50);
- adapter loads per 1,000 requests after warm-up, at Zipf popularity (s=1.1) over 64 adapters,
  counted from the replicas' metrics (target: fewer than 1);
- Serve's own floor on this machine: empty deployments behind its proxy, one hop and two, and
  a handle call alone (the ingress -> predictor hop without HTTP);
- recovery: a predictor replica SIGKILLed under that traffic; seconds until a new replica
  reports, and the requests that failed meanwhile (targets: under 30 s, none).
Writes bench/results/ray-cpu.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import torch
from prometheus_client.parser import text_string_to_metric_families
from safetensors.torch import save

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, this file's folder comes first on the path, and this file would shadow the
# `ray` package it measures.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench.harness import _DONE, bin_path, server, wrk, wrk_get_script, wrk_script  # noqa: E402

ADAPTERS = 64
CAPACITY = 48
RANK = 8
SIZES = (1001, 1000, 1000)  # the seed model
JSON = {"content-type": "application/json"}


def adapter_files(seed: int) -> dict[str, tuple[str, bytes]]:
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for i, (n_in, n_out) in enumerate(itertools.pairwise(SIZES), start=1):
        prefix = f"base_model.model.layer{i}"
        tensors[f"{prefix}.lora_A.weight"] = torch.randn(RANK, n_in, generator=gen) / n_in
        tensors[f"{prefix}.lora_B.weight"] = torch.randn(n_out, RANK, generator=gen) / RANK
    config = {"peft_type": "LORA", "r": RANK, "lora_alpha": 2 * RANK,
              "target_modules": ["layer1", "layer2"]}  # fmt: skip
    return {
        "config": ("adapter_config.json", json.dumps(config).encode()),
        "weights": ("adapter_model.safetensors", save(tensors)),
    }


def upload(url: str, count: int) -> None:
    with httpx.Client(base_url=url, timeout=60) as client:
        for i in range(count):
            r = client.post("/v1/adapters", data={"name": f"z{i}"}, files=adapter_files(i))
            assert r.status_code == 201, r.text


def touch_all(url: str) -> None:
    with httpx.Client(base_url=url, timeout=60) as client:
        for _ in range(2):
            for k in range(ADAPTERS):
                r = client.post("/v1/predict", content=body(f"z{k}"), headers=JSON)
                assert r.status_code == 200, r.text


def body(adapter: str) -> bytes:
    row = [round(random.uniform(-1, 1), 3) for _ in range(SIZES[0])]
    return json.dumps({"inputs": [row], "adapter": adapter}).encode()


def zipf_script(s: float = 1.1) -> str:
    """POSTs one row naming adapter z<k>, k drawn with probability proportional to 1/(k+1)^s."""
    weights = [1 / (k + 1) ** s for k in range(ADAPTERS)]
    total, cdf, acc = sum(weights), [], 0.0
    for w in weights:
        acc += w / total
        cdf.append(f"{acc:.6f}")
    bodies = ",\n".join(f"[==[{body(f'z{k}').decode()}]==]" for k in range(ADAPTERS))
    return f"""
local bodies = {{
{bodies}
}}
local cdf = {{{", ".join(cdf)}}}
local headers = {{["Content-Type"] = "application/json"}}
init = function(args) math.randomseed(os.time() + math.floor(os.clock() * 1e6)) end
request = function()
  local u, k = math.random(), 1
  while k < #cdf and cdf[k] < u do k = k + 1 end
  return wrk.format("POST", "/v1/predict", headers, bodies[k])
end
{_DONE}"""


def replica_loads(url: str) -> dict[str, int]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        s.labels["replica"]: int(s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "loraserve_replica_adapter_loads_total"
    }


def settled_loads(url: str) -> int:
    time.sleep(3)  # every replica has published its figures (each second)
    return sum(replica_loads(url).values())


def latency(url: str, seconds: float) -> dict:
    return wrk(f"{url}/v1/predict", wrk_script("/v1/predict", [body("z0")]), 1, seconds)


def predictor_pids() -> list[int]:
    return [
        p.pid for p in psutil.process_iter(["cmdline"])
        if "ServeReplica:loraserve:Predictor" in " ".join(p.info["cmdline"] or [])
    ]  # fmt: skip


def handle_latency(handle: Any, seconds: float) -> dict:
    """One call at a time through a DeploymentHandle, as the ingress calls a predictor."""
    times = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        start = time.perf_counter()
        handle.remote().result()
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return {
        "requests": len(times),
        "p50_ms": round(times[len(times) // 2], 2),
        "p99_ms": round(times[int(len(times) * 0.99)], 2),
    }


def serve_floor(url: str, seconds: float) -> dict:
    """What Ray Serve alone costs here, at c=1: an empty deployment behind its proxy (one hop),
    one that awaits another through a handle (two hops, as ingress -> predictor), and a handle
    call alone from this process (the hop from the ingress to a predictor, without HTTP)."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray
    from ray import serve

    @serve.deployment(
        logging_config={"enable_access_log": False}, ray_actor_options={"num_cpus": 0}
    )
    class Back:
        async def __call__(self) -> str:
            return "ok"

    @serve.deployment(
        logging_config={"enable_access_log": False}, ray_actor_options={"num_cpus": 0}
    )
    class Front:
        def __init__(self, back: Any = None) -> None:
            self.back = back

        async def __call__(self, request: Any) -> str:
            return "ok" if self.back is None else await self.back.remote()

    ray.init(address="auto", _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        serve.run(Front.bind(), name="floor-one", route_prefix="/floor-one")
        serve.run(Front.bind(Back.bind()), name="floor-two", route_prefix="/floor-two")
        back = serve.run(Back.bind(), name="floor-handle", route_prefix=None)
        floor = {
            hops: wrk(f"{url}/floor-{hops}", wrk_get_script(), 1, seconds)
            for hops in ("one", "two")
        }
        handle_latency(back, 1.0)  # warm-up
        floor["handle"] = handle_latency(back, seconds)
        return floor
    finally:
        for name in ("floor-one", "floor-two", "floor-handle"):
            serve.delete(name)
        ray.shutdown()


def kill_and_recover(url: str, seconds: float) -> dict:
    before = set(replica_loads(url))
    result: dict = {}
    load = threading.Thread(target=lambda: result.update(wrk(url, zipf_script(), 8, seconds)))
    load.start()
    time.sleep(min(5.0, seconds / 4))
    os.kill(predictor_pids()[0], signal.SIGKILL)
    killed = time.monotonic()
    recovered = None
    while recovered is None and time.monotonic() - killed < 60:
        now = set(replica_loads(url))
        if len(now) == len(before) and now - before:
            recovered = time.monotonic() - killed
        time.sleep(0.25)
    load.join()
    return {"recovery_s": recovered, "requests": result["requests"], "failed": result["failed"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10, help="each wrk run (default 10)")
    args = parser.parse_args()
    results: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        env = {"LORASERVE_DATA_DIR": f"{tmp}/one/data", "LORASERVE_ADAPTERS_DIR": f"{tmp}/one/a"}
        with server([bin_path("loraserve"), "serve"], env) as url:
            upload(url, 1)
            wrk(f"{url}/v1/predict", wrk_script("/v1/predict", [body("z0")]), 1, 2)  # warm
            results["runs"]["one_process"] = latency(url, args.seconds)
        env = {"LORASERVE_DATA_DIR": f"{tmp}/ray/data", "LORASERVE_ADAPTERS_DIR": f"{tmp}/ray/a"}
        ray_cmd = [bin_path("loraserve"), "serve", "--ray", "--replicas", "2",
                   "--adapters-per-replica", str(CAPACITY)]  # fmt: skip
        with server(ray_cmd, env, ready_s=300) as url:
            upload(url, ADAPTERS)
            wrk(url, wrk_script("/v1/predict", [body("z0")]), 1, 2)  # warm
            results["runs"]["ray"] = latency(url, args.seconds)
            results["runs"]["serve_floor"] = serve_floor(url, args.seconds)
            # Warm-up: every adapter asked for (Zipf's tail would otherwise first show up in the
            # measured run), then Zipf traffic while Serve learns where each one is.
            touch_all(url)
            wrk(url, zipf_script(), 8, 2 * args.seconds)
            before = settled_loads(url)
            zipf = wrk(url, zipf_script(), 8, 3 * args.seconds)
            loads = settled_loads(url) - before
            results["runs"]["zipf"] = {
                **zipf, "loads": loads, "loads_per_1000": 1000 * loads / zipf["requests"],
                "loads_by_replica": replica_loads(url),
            }  # fmt: skip
            results["runs"]["kill"] = kill_and_recover(url, 4 * args.seconds)
    one, ray = results["runs"]["one_process"], results["runs"]["ray"]
    results["added_p50_ms"] = ray["p50_ms"] - one["p50_ms"]
    results["added_p99_ms"] = ray["p99_ms"] - one["p99_ms"]
    print(json.dumps(results, indent=2))
    out = ROOT / "bench" / "results" / "ray-cpu.json"
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
