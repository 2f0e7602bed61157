"""The Python client and the CLI against the real server, with auth on."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from app.cli.main import main
from app.client import AsyncClient, Client, ServiceError
from support.helpers import (
    adapter_files,
    lora_tensors,
    peft_config,
    reference_composition,
    reference_forward,
    write_base_model,
)
from support.server import Server, running_server

ADMIN, API = "client-admin", "client-api"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    tmp = tmp_path_factory.mktemp("client")
    base = write_base_model(tmp / "base")
    with running_server(tmp, base_model=str(base), admin_keys=ADMIN, api_keys=API) as s:
        yield s, base


def peft_folder(path: Path, rank: int, seed: int) -> tuple[Path, dict, dict]:
    targets = ["layer1", "layer2"]
    config, tensors = (
        peft_config(rank, 2.0 * rank, targets),
        lora_tensors([16, 8, 4], targets, rank, seed),
    )
    path.mkdir(parents=True)
    files = adapter_files(config, tensors)
    (path / "adapter_config.json").write_bytes(files[0])
    (path / "adapter_model.safetensors").write_bytes(files[1])
    return path, config, tensors


def test_sync_client_end_to_end(server, tmp_path: Path) -> None:
    srv, base = server
    folder, config, tensors = peft_folder(tmp_path / "peft", 4, 1)
    with Client(srv.url, api_key=ADMIN) as admin, Client(srv.url, api_key=API) as reader:
        assert admin.ready() == {"status": "ready"}
        assert admin.upload_adapter("c-one", folder)["rank"] == 4
        assert "c-one" in [a["name"] for a in reader.list_adapters()]
        x = torch.randn(3, 16)
        y = reader.predict(x, adapter="c-one", mode="merged")
        torch.testing.assert_close(
            y.double(), reference_forward(base, x, config, tensors), rtol=1e-4, atol=1e-5
        )
        half = reader.predict(x, adapter={"c-one": 0.5})
        torch.testing.assert_close(
            half.double(), reference_composition(base, x, [(config, tensors, 0.5)]),
            rtol=1e-4, atol=1e-5,
        )  # fmt: skip
        per_row = reader.predict(x, adapters=[[("c-one", 0.5)], None, "c-one"])
        torch.testing.assert_close(per_row[0], half[0])
        mixed = reader.predict(x, adapters=["c-one", None, "c-one"])
        torch.testing.assert_close(
            mixed[1:2].double(), reference_forward(base, x[1:2]), rtol=1e-4, atol=1e-5
        )
        out = reader.download_adapter("c-one", tmp_path / "back")
        assert torch.equal(load_file(out / "adapter_model.safetensors")["base_model.model.layer1.lora_A.weight"],
                           tensors["base_model.model.layer1.lora_A.weight"])  # fmt: skip
        with pytest.raises(ServiceError) as denied:
            reader.delete_adapter("c-one")
        assert denied.value.status == 403 and denied.value.code == "insufficient_permissions"

        data = admin.upload_dataset(torch.randn(64, 16), torch.randn(64, 4))
        job = admin.create_job("c-trained", data["id"], rank=2, epochs=2, batch_size=16)
        events = list(admin.follow(job["id"], poll_s=0.05))
        assert [e["data"]["epoch"] for e in events if e["type"] == "metrics"] == [1, 2]
        assert admin.get_job(job["id"])["status"] == "succeeded"
        assert admin.get_adapter("c-trained")["source"] == "training"
        made = admin.compose_adapter("c-both", {"c-one": 0.5, "c-trained": -1.0}, "cat")
        assert made["source"] == "composition" and made["rank"] == 4 + 2
        with pytest.raises(ServiceError) as bad:
            reader.compose_adapter("c-no", {"c-one": 1.0})
        assert bad.value.status == 403
        admin.delete_adapter("c-one")
        with pytest.raises(ServiceError) as missing:
            admin.get_adapter("c-one")
        assert missing.value.status == 404 and missing.value.code == "adapter_not_found"
    with Client(srv.url) as anonymous, pytest.raises(ServiceError) as no_key:
        anonymous.list_adapters()
    assert no_key.value.status == 401


def test_async_client(server, tmp_path: Path) -> None:
    srv, base = server
    folder, config, tensors = peft_folder(tmp_path / "peft", 2, 2)

    async def run() -> torch.Tensor:
        async with AsyncClient(srv.url, api_key=ADMIN) as client:
            await client.upload_adapter("c-async", folder, overwrite=True)
            x = torch.ones(2, 16)
            ys = await asyncio.gather(*(client.predict(x, adapter="c-async") for _ in range(8)))
            assert all(torch.equal(y, ys[0]) for y in ys)
            return ys[0]

    y = asyncio.run(run())
    ref = reference_forward(base, torch.ones(2, 16), config, tensors)
    torch.testing.assert_close(y.double(), ref, rtol=1e-4, atol=1e-5)


def test_cli(server, tmp_path: Path, capsys, monkeypatch) -> None:
    srv, base = server
    monkeypatch.setenv("LORASERVE_URL", srv.url)
    monkeypatch.setenv("LORASERVE_API_KEY", ADMIN)
    folder, config, tensors = peft_folder(tmp_path / "peft", 3, 3)
    main(["adapters", "upload", "cli-one", str(folder)])
    main(["adapters", "list"])
    assert "cli-one" in capsys.readouterr().out
    main(["adapters", "compose", "cli-two", "cli-one:0.5", "cli-one:-1.5", "--method", "svd"])
    assert capsys.readouterr().out.startswith("composed cli-two (rank 3, version ")
    with pytest.raises(SystemExit) as bad_scale:
        main(["adapters", "compose", "cli-three", "cli-one:half"])
    assert bad_scale.value.code == 2 and "must be a number" in capsys.readouterr().err

    x = torch.randn(2, 16)
    (tmp_path / "in.json").write_text(json.dumps({"inputs": x.tolist()}))
    main(["predict", "--inputs", str(tmp_path / "in.json"), "--adapter", "cli-one"])
    out = torch.tensor(json.loads(capsys.readouterr().out)["outputs"], dtype=torch.float64)
    torch.testing.assert_close(
        out, reference_forward(base, x, config, tensors), rtol=1e-4, atol=1e-5
    )
    with pytest.raises(SystemExit) as unwritable:
        main(
            [
                "predict",
                "--inputs",
                str(tmp_path / "in.json"),
                "--out",
                str(tmp_path / "no" / "y.json"),
            ]
        )
    assert unwritable.value.code == 2
    assert capsys.readouterr().err.startswith("error: cannot write")

    save_file(
        {"inputs": torch.randn(64, 16), "targets": torch.randn(64, 4)},
        tmp_path / "train.safetensors",
    )
    plot = tmp_path / "loss.png"
    main(["train", "cli-trained", "--data", str(tmp_path / "train.safetensors"),
          "--validation", str(tmp_path / "train.safetensors"), "--epochs", "3", "--batch-size", "16",
          "--follow", "--plot", str(plot)])  # fmt: skip
    printed = capsys.readouterr()
    assert (
        "epoch 3: train_loss" in printed.out + printed.err
        and "job succeeded" in printed.out + printed.err
    )
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    main(["jobs", "list"])
    assert "succeeded" in capsys.readouterr().out

    main(["adapters", "download", "cli-one", str(tmp_path / "down")])
    assert (tmp_path / "down" / "adapter_model.safetensors").is_file()
    main(["adapters", "delete", "cli-one"])
    with pytest.raises(SystemExit) as failed:
        main(["adapters", "delete", "cli-one"])
    assert failed.value.code == 1
    assert "adapter_not_found" in capsys.readouterr().err


def test_a_large_composition_is_followed_as_a_job(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, capsys, monkeypatch
) -> None:
    """With every svd composition a job: the client hands back the job, the CLI follows it to
    its adapter."""
    tmp = tmp_path_factory.mktemp("client-jobs")
    base = write_base_model(tmp / "base")
    with running_server(
        tmp, base_model=str(base), admin_keys=ADMIN, compose_inline_max_flops="0"
    ) as srv:
        folder, _, _ = peft_folder(tmp_path / "peft", 3, 3)
        with Client(srv.url, api_key=ADMIN) as admin:
            admin.upload_adapter("j-one", folder)
            job = admin.compose_adapter("j-two", {"j-one": 0.5}, "svd", rank=2)
            assert job["object"] == "composition.job" and job["adapter_name"] == "j-two"
            assert admin.composition_job(job["id"])["id"] == job["id"]
        monkeypatch.setenv("LORASERVE_URL", srv.url)
        monkeypatch.setenv("LORASERVE_API_KEY", ADMIN)
        main(["adapters", "compose", "j-three", "j-one:2", "--method", "svd"])
        out = capsys.readouterr().out.splitlines()
        assert out[0].startswith("queued as job composejob-")
        assert out[-1].startswith("composed j-three (rank 3, version ")
