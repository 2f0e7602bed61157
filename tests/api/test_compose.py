"""POST /v1/adapters/compose: a new version whose outputs are the composition's, written out
longhand; it records its sources, loads in PEFT, and bad input changes nothing."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file

from app.adapters.versions import safetensors_header
from support.helpers import (
    TINY_SIZES,
    adapter_files,
    lora_tensors,
    peft_config,
    reference_composition,
)
from support.http import upload

SOURCES = {  # name -> (rank, alpha, targets, seed)
    "p": (2, 4.0, ("layer1", "layer2"), 1),
    "q": (3, 3.0, ("layer2",), 2),
}


@pytest.fixture
def sources(client: TestClient) -> dict[str, tuple[dict, dict]]:
    out = {}
    for name, (r, alpha, targets, seed) in SOURCES.items():
        config = peft_config(r, alpha, targets)
        tensors = lora_tensors(TINY_SIZES, targets, r, seed=seed)
        assert upload(client, name, *adapter_files(config, tensors)).status_code == 201
        out[name] = (config, tensors)
    return out


def _compose(client: TestClient, **body) -> object:
    return client.post("/v1/adapters/compose", json=body)


def _download(client: TestClient, name: str) -> dict[str, bytes]:
    r = client.get(f"/v1/adapters/{name}/download")
    assert r.status_code == 200
    with zipfile.ZipFile(io.BytesIO(r.content)) as archive:
        return {n: archive.read(n) for n in archive.namelist()}


def test_the_saved_composition_loads_in_peft(
    client: TestClient, sources, base_folder: Path, tmp_path: Path
) -> None:
    from peft import PeftModel

    from app.families.mlp.config import ModelConfig
    from app.families.mlp.module import build_module

    body = {"name": "mix", "sources": [{"name": "p", "scale": 0.7}, {"name": "q", "scale": 1.2}],
            "method": "ties_svd", "rank": 3, "density": 0.5}  # fmt: skip
    assert _compose(client, **body).status_code == 201
    for name, data in _download(client, "mix").items():
        (tmp_path / name).write_bytes(data)
    module = build_module(ModelConfig.load(base_folder))
    module.load_state_dict(load_file(base_folder / "model.safetensors"))
    model = PeftModel.from_pretrained(module.eval(), tmp_path).eval()
    x = torch.randn(3, TINY_SIZES[0])
    with torch.no_grad():
        expected = model(x)
    ours = client.post("/v1/predict", json={"inputs": x.tolist(), "adapter": "mix"}).json()
    torch.testing.assert_close(torch.tensor(ours["outputs"]), expected, atol=1e-5, rtol=1e-5)


def test_cat_serves_the_weighted_sum_of_its_sources(
    client: TestClient, sources, base_folder: Path
) -> None:
    body = {"name": "pq", "sources": [{"name": "p", "scale": 0.5}, {"name": "q", "scale": -2.0}],
            "method": "cat"}  # fmt: skip
    r = _compose(client, **body)
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["source"] == "composition" and made["rank"] == 5 and made["alpha"] == 5.0
    assert made["target_modules"] == ["layer1", "layer2"]
    x = torch.randn(4, TINY_SIZES[0])
    expected = reference_composition(base_folder, x, [(*sources["p"], 0.5), (*sources["q"], -2.0)])
    for mode in ("unmerged", "merged"):
        out = client.post("/v1/predict", json={"inputs": x.tolist(), "adapter": "pq", "mode": mode})
        assert out.status_code == 200, out.text
        torch.testing.assert_close(
            torch.tensor(out.json()["outputs"]).double(), expected, atol=1e-5, rtol=1e-5
        )


def test_the_version_records_its_sources_and_method(client: TestClient, sources) -> None:
    versions = {n: client.get(f"/v1/adapters/{n}").json()["version"] for n in SOURCES}
    body = {"name": "pp", "sources": [{"name": "p", "scale": 1.0}, {"name": f"p@{versions['p']}",
            "scale": 0.5}, {"name": "q"}], "method": "svd", "rank": 2}  # fmt: skip
    assert _compose(client, **body).status_code == 201
    files = _download(client, "pp")
    meta = safetensors_header(files["adapter_model.safetensors"])[1]["__metadata__"]
    assert meta["source"] == "composition" and meta["method"] == "svd" and meta["rank"] == "2"
    recorded = json.loads(meta["sources"])
    # p named twice (by name and by its version): one source, its scales added.
    assert recorded == [
        {"name": "p", "version": versions["p"], "scale": 1.5},
        {"name": "q", "version": versions["q"], "scale": 1.0},
    ]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"sources": [{"name": "nope"}], "method": "cat"}, 404, "sources.0.name"),
        ({"sources": [{"name": "p", "scale": 17.0}], "method": "cat"}, 422, None),
        ({"sources": [{"name": "p", "scale": float("nan")}], "method": "cat"}, 422, None),
        ({"sources": [], "method": "cat"}, 422, None),
        ({"sources": [{"name": "p"}] * 9, "method": "cat"}, 422, "sources"),
        ({"sources": [{"name": "p"}, {"name": "q"}], "method": "linear"}, 422, "sources"),
        ({"sources": [{"name": "p"}], "method": "ties_svd"}, 422, "density"),
        ({"sources": [{"name": "p"}], "method": "cat", "rank": 2}, 422, "rank"),
        ({"sources": [{"name": "p"}], "method": "svd", "rank": 65}, 422, "rank"),
        ({"sources": [{"name": "p"}], "method": "mean"}, 422, None),
        ({"sources": [{"name": "p@" + "0" * 64}], "method": "cat"}, 404, "sources.0.name"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(
    client: TestClient, sources, body, status, param
) -> None:
    def stored() -> list[tuple[str, str]]:  # (residency may change: sources were read)
        return [(a["name"], a["version"]) for a in client.get("/v1/adapters").json()["data"]]

    before = stored()
    r = client.post(
        "/v1/adapters/compose",
        content=json.dumps({"name": "bad", **body}, allow_nan=True),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == status, r.text
    if param is not None:
        assert r.json()["error"]["param"] == param
    assert stored() == before
