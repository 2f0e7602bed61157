"""A store and a jobs.db written by the last release before shared state come through the import.

The older code is taken from git (the commit named below), run as a real server to upload,
overwrite, train and cancel; then this code starts on the same folders. Downloads must give the
same bytes, predictions the same numbers, and the jobs, events and datasets the same answers.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import save

from support.helpers import adapter_files, lora_tensors, peft_config, write_base_model
from support.server import ROOT, free_port, launched, running_server

OLDER = "f8c415b"  # the last commit whose store is a folder per name and whose jobs are in jobs.db


def older_code(tmp_path: Path) -> Path:
    # A checkout without the history (a shallow clone, an sdist) cannot run the older code.
    if shutil.which("git") is None:
        pytest.skip("git is needed: the older release is read from the repository's history")
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", OLDER, "app", "models"],
        capture_output=True,
    )
    if archive.returncode != 0:
        pytest.skip(f"commit {OLDER} is not in this checkout's history")
    folder = tmp_path / "older"
    folder.mkdir()
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(folder, filter="data")
    return folder


@contextmanager
def older_server(code: Path, env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port),
               "--host", "127.0.0.1", "--log-level", "warning"]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with launched(command, url, {**env, "PYTHONPATH": str(code)}, 60, cwd=code):
        yield url


def snapshot(url: str, x: torch.Tensor) -> dict:
    """Everything a client can read of the adapters, datasets and jobs."""
    client = httpx.Client(base_url=url, timeout=30)
    adapters = client.get("/v1/adapters").json()["data"]
    out: dict = {"datasets": client.get("/v1/datasets").json()["data"], "adapters": {}}
    for a in adapters:
        archive = zipfile.ZipFile(
            io.BytesIO(client.get(f"/v1/adapters/{a['name']}/download").content)
        )
        body = {"inputs": x.tolist(), "adapter": a["name"]}
        out["adapters"][a["name"]] = {
            "files": {n: archive.read(n) for n in archive.namelist()},
            "outputs": client.post("/v1/predict", json=body).json()["outputs"],
            **{
                k: a[k]
                for k in (
                    "sha256",
                    "uploaded_sha256",
                    "size_bytes",
                    "source",
                    "rank",
                    "alpha",
                    "layers",
                    "created_at",
                )
            },
        }
    jobs = client.get("/v1/fine-tuning/jobs", params={"limit": 100}).json()["data"]
    out["jobs"] = {
        j["id"]: {
            "job": j,
            "events": [
                {k: e[k] for k in ("created_at", "level", "type", "message", "data")}
                for e in client.get(
                    f"/v1/fine-tuning/jobs/{j['id']}/events", params={"limit": 100}
                ).json()["data"]
            ],
        }
        for j in jobs
    }
    return out


def test_an_older_store_and_jobs_db_come_through_unchanged(tmp_path: Path) -> None:
    code = older_code(tmp_path)
    base = write_base_model(tmp_path / "base")
    env = {
        "LORASERVE_BASE_MODEL": str(base),
        "LORASERVE_ADAPTERS_DIR": str(tmp_path / "adapters"),
        "LORASERVE_DATA_DIR": str(tmp_path / "data"),
        "LORASERVE_DEVICE": "cpu",
    }
    x = torch.randn(3, 16)
    targets = ["layer1", "layer2"]
    with older_server(code, env) as url:
        client = httpx.Client(base_url=url, timeout=30)
        for name, seed, rank in (("first", 1, 2), ("second", 2, 4), ("first", 3, 3)):
            files = adapter_files(
                peft_config(rank, 8, targets), lora_tensors([16, 8, 4], targets, rank, seed)
            )
            response = client.post(
                "/v1/adapters", params={"overwrite": "true"}, data={"name": name},
                files={"config": ("c", files[0]), "weights": ("w", files[1])},
            )  # fmt: skip
            assert response.status_code == 201, response.text
        data = save({"inputs": torch.randn(32, 16), "targets": torch.randn(32, 4)})
        train = client.post("/v1/datasets", files={"file": ("d.safetensors", data)}).json()["id"]
        done = client.post("/v1/fine-tuning/jobs", json={
            "adapter_name": "trained", "training_dataset": train,
            "hyperparameters": {"epochs": 2, "batch_size": 16, "rank": 2},
        }).json()["id"]  # fmt: skip
        deadline = time.monotonic() + 60
        while client.get(f"/v1/fine-tuning/jobs/{done}").json()["status"] != "succeeded":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        queued = client.post("/v1/fine-tuning/jobs", json={
            "adapter_name": "never", "training_dataset": train,
            "hyperparameters": {"epochs": 100_000, "batch_size": 1},
        }).json()["id"]  # fmt: skip
        client.post(f"/v1/fine-tuning/jobs/{queued}/cancel")
        before = snapshot(url, x)
    assert sorted(before["adapters"]) == ["first", "second", "trained"]
    assert len(before["jobs"]) == 2 and len(before["datasets"]) == 1

    with running_server(tmp_path, base_model=str(base)) as server:
        after = snapshot(server.url, x)
    assert without_new_nulls(after, before) == before
    assert (tmp_path / "data" / "jobs.db.imported").is_file()
    assert (tmp_path / "adapters" / ".imported" / "first" / "adapter_model.safetensors").is_file()


def without_new_nulls(after: object, before: object) -> object:
    """`after` less the keys the older release never had whose value is null: fields added since
    (a metric only decoders report, say) may appear empty, but nothing the older data held may
    change or go."""
    if isinstance(after, dict) and isinstance(before, dict):
        return {
            k: without_new_nulls(v, before.get(k))
            for k, v in after.items()
            if k in before or v is not None
        }
    if isinstance(after, list) and isinstance(before, list) and len(after) == len(before):
        return [without_new_nulls(a, b) for a, b in zip(after, before, strict=True)]
    return after
