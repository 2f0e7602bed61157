"""Model work runs on one thread, so the process keeps one OpenMP team; start-up work runs on
a thread that ends with it."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save

import app.services as services_module
from app.engine import ComputeThread, on_passing_thread
from app.main import create_app
from app.settings import Settings
from support.helpers import adapter_files, lora_tensors, peft_config
from support.http import upload


def test_work_runs_in_order_on_one_thread_named_inference() -> None:
    compute = ComputeThread()
    seen: list[tuple[int, str]] = []
    try:
        for i in range(5):
            compute.submit(lambda i=i: seen.append((i, threading.current_thread().name)))
        assert compute.call(lambda: 42) == 42
        assert asyncio.run(compute.run(threading.current_thread)).name == "inference"
    finally:
        compute.close()
    assert seen == [(i, "inference") for i in range(5)]


def test_an_error_reaches_the_caller_and_the_thread_goes_on() -> None:
    compute = ComputeThread()
    try:
        with pytest.raises(ZeroDivisionError):
            compute.call(lambda: 1 / 0)
        assert compute.call(lambda: "still here") == "still here"
    finally:
        compute.close()


def test_a_passing_thread_has_ended_when_its_result_or_error_comes_back() -> None:
    seen: list[threading.Thread] = []

    def work(x: int) -> int:
        seen.append(threading.current_thread())
        return x + 1

    assert on_passing_thread(work, 41) == 42
    with pytest.raises(ZeroDivisionError):
        on_passing_thread(lambda: seen.append(threading.current_thread()) or 1 / 0)
    assert len(seen) == 2 and threading.current_thread() not in seen
    assert not any(t.is_alive() for t in seen)


@pytest.mark.parametrize("batching", [True, False])
def test_the_service_loads_on_a_passing_thread_and_runs_and_merges_on_the_compute_thread(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, batching: bool
) -> None:
    threads: set[str] = set()
    loaders: list[threading.Thread] = []
    load = services_module.load_family

    def recorded_load(*args, **kwargs):
        loaders.append(threading.current_thread())
        return load(*args, **kwargs)

    monkeypatch.setattr(services_module, "load_family", recorded_load)
    settings = settings.model_copy(update={"batching": batching, "max_batch_rows": 4})
    with TestClient(create_app(settings)) as client:
        predictor = client.app.state.services.predictor  # type: ignore[attr-defined]
        for name in ("forward", "merge"):
            method = getattr(predictor, name)

            def recorded(*args, _method=method, **kwargs):
                threads.add(threading.current_thread().name)
                return _method(*args, **kwargs)

            setattr(predictor, name, recorded)
        config = peft_config(2, 4.0, ("layer1", "layer2"))
        files = adapter_files(config, lora_tensors([16, 8, 4], ("layer1", "layer2"), 2))
        assert upload(client, "a", *files).status_code == 201
        x = torch.randn(8, 16)
        body = {"inputs": x.tolist(), "adapter": "a"}
        assert client.post("/v1/predict", json=body).json()["mode"] == "merged"  # 8 rows >= 4
        binary = save({"inputs": x.half()})
        headers = {"content-type": "application/octet-stream"}
        assert client.post("/v1/predict", content=binary, headers=headers).status_code == 200
    assert threads == {"inference"}
    # The load's OpenMP team ended with its thread: the compute thread's is the only one left.
    assert len(loaders) == 1 and loaders[0].name == "start-up" and not loaders[0].is_alive()


def test_f16_and_bf16_rows_widen_exactly(tmp_path: Path) -> None:
    from app.families.mlp.io import parse_safetensors

    x = torch.randn(64, 33) * 1000
    x[0, :4] = torch.tensor([0.0, -0.0, 65504.0, -1e-7])
    for dtype in (torch.float16, torch.bfloat16):
        rows = x.to(dtype)
        call = parse_safetensors(save({"inputs": rows}), None, "auto")
        assert call.x.dtype == torch.float32
        assert torch.equal(call.x, rows.float())


def test_a_decoder_service_computes_only_on_its_generate_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The load and the engine's start-up writes (fused weights, KV cache) run on threads that
    have ended; every step runs on the engine's thread."""
    from app.families.decoder.generate import engine as engine_module
    from support.gen_helpers import write_tiny_causal_lm

    made: list[threading.Thread] = []
    stepped: set[str] = set()
    init, step = engine_module.GenerationEngine.__init__, engine_module.GenerationEngine._step

    def recorded_init(self, *args, **kwargs):
        made.append(threading.current_thread())
        init(self, *args, **kwargs)

    def recorded_step(self):
        stepped.add(threading.current_thread().name)
        step(self)

    monkeypatch.setattr(engine_module.GenerationEngine, "__init__", recorded_init)
    monkeypatch.setattr(engine_module.GenerationEngine, "_step", recorded_step)
    base_dir = write_tiny_causal_lm(tmp_path / "tiny-llama")
    settings = Settings(
        base_model=base_dir, adapters_dir=tmp_path / "a", data_dir=tmp_path / "d", api_keys=""
    )
    with TestClient(create_app(settings)) as client:
        body = {"model": base_dir.name, "prompt": "hello there", "max_tokens": 3}
        assert client.post("/v1/completions", json=body).status_code == 200
    # (TestClient runs start-up on a portal thread of its own, which has ended too: the name
    # tells the passing thread apart.)
    assert len(made) == 1 and made[0].name == "start-up" and not made[0].is_alive()
    assert stepped == {"generate"}
