"""The serving dtype (DTYPE): parsing, what `auto` resolves to, the mlp family's own dtype, and
adapters converted to the dtype of the base they are loaded into."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

import app.model.dtype as dtype_module
from app.adapters import BaseInfo, base_info
from app.families import load_base_model
from app.model import InvalidModelConfig
from app.model.dtype import resolve_dtype
from app.settings import Settings
from support.gen_helpers import write_tiny_causal_lm
from support.helpers import (
    RegistryByName,
    adapter_files,
    lora_tensors,
    peft_config,
    write_base_model,
    write_tiny_text_model,
)

CPU = torch.device("cpu")


@pytest.fixture
def bf16_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dtype_module, "cpu_has_native_bf16", lambda: True)


@pytest.fixture
def fp32_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dtype_module, "cpu_has_native_bf16", lambda: False)


@pytest.mark.parametrize("value", ["auto", "float32", "bfloat16", "float16"])
def test_the_setting_takes_its_four_values(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("LORASERVE_DTYPE", value)
    assert Settings().dtype == value


def test_the_default_is_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LORASERVE_DTYPE")  # tests/conftest.py sets float32 for the session
    assert Settings().dtype == "auto"


@pytest.mark.parametrize("value", ["bf16", "fp32", "half", "Float32", "float64", ""])
def test_other_values_are_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("LORASERVE_DTYPE", value)
    with pytest.raises(ValidationError) as refused:
        Settings()
    error = refused.value.errors()[0]
    assert error["loc"] == ("dtype",)
    assert "'auto', 'float32', 'bfloat16' or 'float16'" in error["msg"]


def test_serve_with_a_bad_dtype_is_one_error_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from app.cli.main import EXIT_USAGE, main

    monkeypatch.setenv("LORASERVE_DTYPE", "bf16")
    with pytest.raises(SystemExit) as exited:
        main(["serve"])
    err = capsys.readouterr().err.strip()
    assert exited.value.code == EXIT_USAGE
    assert err.startswith("error: invalid settings: dtype: ") and "\n" not in err, err
    assert "bfloat16" in err


def test_auto_is_bf16_on_a_cpu_with_native_bf16(bf16_cpu: None) -> None:
    assert resolve_dtype("auto", CPU) == torch.bfloat16


def test_auto_is_fp32_on_a_cpu_without(fp32_cpu: None) -> None:
    assert resolve_dtype("auto", CPU) == torch.float32


def test_auto_on_cuda_is_bf16_only_where_the_gpu_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve_dtype("auto", cuda) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert resolve_dtype("auto", cuda) == torch.float32
    assert resolve_dtype("float16", cuda) == torch.float16
    with pytest.raises(InvalidModelConfig, match="no native bf16"):
        resolve_dtype("bfloat16", cuda)


@pytest.mark.parametrize("value", ["float32", "bfloat16", "float16"])
def test_an_explicit_dtype_is_taken_as_asked(fp32_cpu: None, value: str) -> None:
    assert resolve_dtype(value, CPU) == getattr(torch, value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["auto", "float32", "bfloat16", "float16"])
def test_the_mlp_family_keeps_its_own_dtype(bf16_cpu: None, value: str, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="app.model"):
        assert resolve_dtype(value, CPU, torch.float32) == torch.float32  # type: ignore[arg-type]
        assert resolve_dtype(value, CPU, torch.bfloat16) == torch.bfloat16  # type: ignore[arg-type]
    ignored = [r.getMessage() for r in caplog.records]
    if value in ("auto", "float32"):
        assert len(ignored) == (0 if value == "auto" else 1)  # float32 differs from bf16's config
    else:
        assert ignored and f"DTYPE={value} is not applied to the mlp family" in ignored[0]


def test_an_unknown_setting_is_refused_by_the_loader(tmp_path: Path) -> None:
    with pytest.raises(InvalidModelConfig, match="DTYPE must be"):
        load_base_model(write_base_model(tmp_path / "m"), CPU, dtype="bf16")  # type: ignore[arg-type]


def test_the_seed_family_loads_in_fp32_whatever_the_setting(bf16_cpu: None, tmp_path) -> None:
    folder = write_base_model(tmp_path / "m")
    for value in ("auto", "bfloat16", "float16"):
        base = load_base_model(folder, CPU, dtype=value)  # type: ignore[arg-type]
        assert base.dtype == torch.float32
        assert all(p.dtype == torch.float32 for p in base.module.parameters())


def test_hugging_face_bases_load_in_the_resolved_dtype(bf16_cpu: None, tmp_path: Path) -> None:
    causal = write_tiny_causal_lm(tmp_path / "llama", seed=1)
    text = write_tiny_text_model(tmp_path / "bert")
    for folder in (causal, text):
        for value, expected in (("auto", torch.bfloat16), ("float32", torch.float32)):
            base = load_base_model(folder, CPU, dtype=value)  # type: ignore[arg-type]
            assert base.dtype == expected
            assert {p.dtype for p in base.module.parameters()} == {expected}
    # The loader's own default is the fp32 reference, whatever the CPU has.
    assert load_base_model(causal, CPU).dtype == torch.float32


def test_an_adapter_loaded_into_a_bf16_base_holds_bf16_tensors(tmp_path: Path) -> None:
    base = load_base_model(write_tiny_text_model(tmp_path / "bert"), CPU, dtype="bfloat16")
    info: BaseInfo = base_info(base)
    assert info.dtype == torch.bfloat16
    registry = RegistryByName.local(tmp_path / "adapters", info, 64, 1 << 30)
    linears = {n: (i.in_features, i.out_features) for n, i in base.linears().items()}
    targets = [n for n in linears if n.endswith(("query", "value"))]
    gen = torch.Generator().manual_seed(0)
    tensors = {}
    for name in targets:
        n_in, n_out = linears[name]
        tensors[f"base_model.model.{name}.lora_A.weight"] = torch.randn(4, n_in, generator=gen)
        tensors[f"base_model.model.{name}.lora_B.weight"] = torch.randn(n_out, 4, generator=gen)
    registry.upload("a", *adapter_files(peft_config(4, 8, ["query", "value"]), tensors))
    _, adapter = registry.load("a")
    assert set(adapter.modules) == set(targets)
    for module in adapter.modules.values():
        assert module.lora_A.dtype == module.lora_B.dtype == torch.bfloat16
        assert module.lora_A.device == base.device
    # fp32 upload rounded once to bf16: the stored file keeps the fp32 values.
    name = targets[0]
    key = f"base_model.model.{name}.lora_A.weight"
    assert torch.equal(adapter.modules[name].lora_A, tensors[key].to(torch.bfloat16))


def test_an_mlp_adapter_stays_fp32(tmp_path: Path) -> None:
    base = load_base_model(write_base_model(tmp_path / "m"), CPU, dtype="bfloat16")
    registry = RegistryByName.local(tmp_path / "adapters", base_info(base), 64, 1 << 30)
    sizes = [base.input_dim or 0, *(i.out_features for i in base.linears().values())]
    tensors = lora_tensors(sizes, ["layer1"], 2, dtype=torch.bfloat16)
    registry.upload("a", *adapter_files(peft_config(2, 4, ["layer1"]), tensors))
    _, adapter = registry.load("a")
    assert adapter.modules["layer1"].lora_A.dtype == torch.float32


@pytest.mark.parametrize("native", [True, False])
def test_the_service_on_auto_says_the_dtype_it_resolved(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, native: bool
) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app

    monkeypatch.setattr(dtype_module, "cpu_has_native_bf16", lambda: native)
    settings = Settings(
        base_model=write_tiny_causal_lm(tmp_path / "llama", seed=1),
        adapters_dir=tmp_path / "adapters",
        data_dir=tmp_path / "data",
        device="cpu",
        dtype="auto",
    )
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/model").json()["dtype"] == ("bfloat16" if native else "float32")


def test_the_seed_family_service_says_float32_when_bf16_is_asked(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app

    warned: list[str] = []  # the app's own logging setup keeps its records from caplog
    monkeypatch.setattr(dtype_module.log, "warning", lambda msg, *args: warned.append(msg % args))
    with TestClient(create_app(settings.model_copy(update={"dtype": "bfloat16"}))) as client:
        assert client.get("/v1/model").json()["dtype"] == "float32"
    assert len(warned) == 1 and "DTYPE=bfloat16 is not applied to the mlp family" in warned[0]
