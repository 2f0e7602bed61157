"""Compositions on /v1/predict: a row may name a weighted list of adapters, and gets
x @ W.T + Σ w_i · s_i · (x @ A_i.T) @ B_i.T, written out longhand in float64 here; in a mixed
batch every row gets what it gets alone."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load, save

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
    "r": (4, 8.0, ("layer1",), 3),
}


@pytest.fixture
def sources(client: TestClient) -> dict[str, tuple[dict, dict]]:
    out = {}
    for name, (rank, alpha, targets, seed) in SOURCES.items():
        config = peft_config(rank, alpha, targets)
        tensors = lora_tensors(TINY_SIZES, targets, rank, seed=seed)
        assert upload(client, name, *adapter_files(config, tensors)).status_code == 201
        out[name] = (config, tensors)
    return out


def _predict(client: TestClient, x: torch.Tensor, **body) -> tuple[torch.Tensor, str]:
    r = client.post("/v1/predict", json={"inputs": x.tolist(), **body})
    assert r.status_code == 200, r.text
    return torch.tensor(r.json()["outputs"]), r.json()["mode"]


def _longhand(base: Path, sources, x: torch.Tensor, composition) -> torch.Tensor:
    parts = [(*sources[e["name"]], e.get("scale", 1.0)) for e in composition]
    return reference_composition(base, x, parts).float()


@pytest.mark.parametrize("mode", ["auto", "unmerged", "merged"])
def test_a_composition_equals_its_longhand(client, sources, base_folder, mode) -> None:
    composition = [{"name": "p", "scale": 0.5}, {"name": "q", "scale": -1.5}, {"name": "r"}]
    x = torch.randn(5, TINY_SIZES[0])
    out, used = _predict(client, x, adapter=composition, mode=mode)
    assert used == ("unmerged" if mode == "auto" else mode)
    expected = _longhand(base_folder, sources, x, composition)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_scale_one_is_the_adapter_and_scale_zero_the_base(client, sources) -> None:
    x = torch.randn(3, TINY_SIZES[0])
    plain, _ = _predict(client, x, adapter="p")
    base, _ = _predict(client, x)
    assert torch.equal(_predict(client, x, adapter=[{"name": "p", "scale": 1.0}])[0], plain)
    halves = [{"name": "p", "scale": 0.5}, {"name": "p", "scale": 0.5}]  # summed: scale 1
    assert torch.equal(_predict(client, x, adapter=halves)[0], plain)
    assert torch.equal(_predict(client, x, adapter=[{"name": "q", "scale": 0.0}])[0], base)


def test_a_mixed_batch_gives_every_row_what_it_gets_alone(client, sources, base_folder) -> None:
    rows = [
        "p",
        None,
        [{"name": "p", "scale": 0.5}, {"name": "q", "scale": 2.0}],
        [{"name": "r", "scale": -1.0}],
        "q",
        [{"name": "q", "scale": 2.0}, {"name": "p", "scale": 0.5}],  # the third, reordered
        [{"name": "p", "scale": 0.25}, {"name": "q"}, {"name": "r", "scale": 3.0}],
    ]
    x = torch.randn(len(rows), TINY_SIZES[0])
    together, _ = _predict(client, x, adapters=rows)
    for i, spec in enumerate(rows):
        alone, _ = _predict(client, x[i : i + 1], adapter=spec)
        torch.testing.assert_close(together[i : i + 1], alone, atol=1e-6, rtol=1e-6)
        listed = [] if spec is None else [{"name": spec}] if isinstance(spec, str) else spec
        expected = _longhand(base_folder, sources, x[i : i + 1], listed)
        torch.testing.assert_close(together[i : i + 1], expected, atol=1e-5, rtol=1e-5)


def test_concurrent_requests_with_compositions_are_batched_and_kept_apart(
    client, sources, base_folder
) -> None:
    specs = [
        [{"name": "p", "scale": s}, {"name": "q", "scale": 1.0 - s}] for s in (0.1, 0.4, 0.9)
    ] + ["r", None]
    x = torch.randn(len(specs) * 3, TINY_SIZES[0])
    got: dict[int, torch.Tensor] = {}

    def ask(i: int) -> None:
        got[i] = _predict(client, x[3 * i : 3 * i + 3], adapter=specs[i])[0]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(specs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, spec in enumerate(specs):
        listed = [] if spec is None else [{"name": spec}] if isinstance(spec, str) else spec
        expected = _longhand(base_folder, sources, x[3 * i : 3 * i + 3], listed)
        torch.testing.assert_close(got[i], expected, atol=1e-5, rtol=1e-5)


def test_safetensors_bodies_take_compositions_in_their_metadata(client, sources) -> None:
    rows = [[{"name": "p", "scale": 0.5}, {"name": "r", "scale": 2.0}], "q"]
    x = torch.randn(2, TINY_SIZES[0])
    body = save({"inputs": x}, metadata={"adapters": json.dumps(rows)})
    r = client.post(
        "/v1/predict", content=body,
        headers={"content-type": "application/octet-stream", "accept": "application/octet-stream"},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    expected, _ = _predict(client, x, adapters=rows)
    torch.testing.assert_close(load(r.content)["outputs"], expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    ("adapter", "status", "param"),
    [
        ([{"name": "p"}, {"name": "nope"}], 404, "adapter"),
        ([{"name": "p", "scale": 16.5}], 422, None),
        ([{"name": "p", "scale": 1e300}], 422, None),
        ([], 422, None),
        ([{"name": "p"}] * 9, 422, "adapter"),
        ([{"name": "p", "weight": 1.0}], 422, None),
        ([{"name": "p@" + "0" * 64}], 404, "adapter"),
        ([{"name": "../p"}], 422, "adapter"),
    ],
)
def test_a_bad_composition_is_refused(client, sources, adapter, status, param) -> None:
    r = client.post("/v1/predict", json={"inputs": [[0.1] * TINY_SIZES[0]], "adapter": adapter})
    assert r.status_code == status, r.text
    if param is not None:
        assert r.json()["error"]["param"] == param


def test_rows_all_on_compositions_of_one_size(client, sources, base_folder) -> None:
    """Every row two entries (the entries' terms summed by a reshape, not scattered back)."""
    rows = [
        [{"name": "p", "scale": 0.5}, {"name": "q", "scale": 2.0}],
        [{"name": "r", "scale": -1.0}, {"name": "p", "scale": 1.5}],
        [{"name": "q", "scale": 0.25}, {"name": "r", "scale": 0.75}],
        [{"name": "p", "scale": 0.5}, {"name": "q", "scale": 2.0}],
    ]
    x = torch.randn(len(rows), TINY_SIZES[0])
    together, _ = _predict(client, x, adapters=rows)
    for i, spec in enumerate(rows):
        expected = _longhand(base_folder, sources, x[i : i + 1], spec)
        torch.testing.assert_close(together[i : i + 1], expected, atol=1e-5, rtol=1e-5)
