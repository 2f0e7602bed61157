"""Adapters move both ways between this service and the real PEFT library."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from torch import nn

from support.http import make_files, upload


class PlainMLP(nn.Module):
    """The tiny base written as any PEFT user would: nn.Linear layers, relu between."""

    def __init__(self) -> None:
        super().__init__()
        self.layer1 = nn.Linear(16, 8)
        self.layer2 = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer2(torch.relu(self.layer1(x)))


def plain_base(base_folder: Path) -> PlainMLP:
    model = PlainMLP()
    model.load_state_dict(load_file(base_folder / "model.safetensors"))
    return model.eval()


def _predict(client: TestClient, x: torch.Tensor, adapter: str, mode: str) -> torch.Tensor:
    response = client.post(
        "/v1/predict", json={"inputs": x.tolist(), "adapter": adapter, "mode": mode}
    )
    assert response.status_code == 200, response.text
    return torch.tensor(response.json()["outputs"])


PEFT_CONFIGS = {
    "both layers": {"r": 4, "lora_alpha": 8, "target_modules": ["layer1", "layer2"]},
    "one layer": {"r": 2, "lora_alpha": 3, "target_modules": ["layer2"]},
    "rslora + patterns": {
        "r": 8,
        "lora_alpha": 16,
        "target_modules": ["layer1", "layer2"],
        "use_rslora": True,
        "rank_pattern": {"layer2": 2},
        "alpha_pattern": {"layer2": 5},
    },
    "regex target": {"r": 4, "lora_alpha": 4, "target_modules": r"layer\d"},
}


@pytest.mark.parametrize("case", list(PEFT_CONFIGS))
@pytest.mark.parametrize("mode", ["unmerged", "merged"])
def test_adapter_saved_by_peft_predicts_what_peft_computes(
    client: TestClient, base_folder: Path, tmp_path: Path, case: str, mode: str
) -> None:
    torch.manual_seed(0)
    peft_model = get_peft_model(plain_base(base_folder), LoraConfig(**PEFT_CONFIGS[case]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:  # PEFT starts B at zero; make the adapter do something
                param.normal_()
    peft_model.save_pretrained(tmp_path / "out")
    folder = tmp_path / "out"
    response = upload(
        client,
        "from-peft",
        (folder / "adapter_config.json").read_bytes(),
        (folder / "adapter_model.safetensors").read_bytes(),
    )
    assert response.status_code == 201, response.text
    x = torch.randn(6, 16)
    with torch.no_grad():
        expected = peft_model(x)
    torch.testing.assert_close(
        _predict(client, x, "from-peft", mode), expected, rtol=1e-4, atol=1e-5
    )


def test_adapter_downloaded_from_the_service_loads_in_peft(
    client: TestClient, base_folder: Path, tmp_path: Path
) -> None:
    _, _, files = make_files(r=4, seed=3)
    upload(client, "ours", *files)
    archive = zipfile.ZipFile(io.BytesIO(client.get("/v1/adapters/ours/download").content))
    archive.extractall(tmp_path / "ours")
    peft_model = PeftModel.from_pretrained(plain_base(base_folder), tmp_path / "ours").eval()
    x = torch.randn(6, 16)
    with torch.no_grad():
        expected = peft_model(x)
    assert not torch.allclose(expected, plain_base(base_folder)(x))  # the adapter is applied
    for mode in ("unmerged", "merged"):
        torch.testing.assert_close(
            _predict(client, x, "ours", mode), expected, rtol=1e-4, atol=1e-5
        )
