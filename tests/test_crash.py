"""SIGKILL the real server mid-job; the restart marks the job and leaves every adapter intact."""

from __future__ import annotations

import hashlib
import io
import signal
import time
import zipfile
from pathlib import Path

import httpx
import torch
from safetensors.torch import save

from app.adapters import catalog
from app.adapters.versions import version_id
from app.state import Database
from support.helpers import adapter_files, lora_tensors, peft_config, write_base_model
from support.server import running_server


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def test_sigkill_during_training_leaves_the_job_interrupted_and_adapters_intact(
    tmp_path: Path,
) -> None:
    base = write_base_model(tmp_path / "base")
    store = tmp_path / "adapters"
    with running_server(tmp_path, base_model=str(base), job_lease_ms="1000") as server:
        client = httpx.Client(base_url=server.url)
        for i in range(2):
            targets = ["layer1", "layer2"]
            files = adapter_files(
                peft_config(4, 8, targets), lora_tensors([16, 8, 4], targets, 4, i)
            )
            response = client.post(
                "/v1/adapters",
                data={"name": f"earlier{i}"},
                files={"config": ("c", files[0]), "weights": ("w", files[1])},
            )
            assert response.status_code == 201
        data = save({"inputs": torch.randn(256, 16), "targets": torch.randn(256, 4)})
        train = client.post("/v1/datasets", files={"file": ("d", data)}).json()["id"]
        before = digests(store)
        job = client.post(
            "/v1/fine-tuning/jobs",
            json={
                "adapter_name": "victim",
                "training_dataset": train,
                "hyperparameters": {"epochs": 1000, "batch_size": 1},
            },
        ).json()
        deadline = time.monotonic() + 20
        while client.get(f"/v1/fine-tuning/jobs/{job['id']}").json()["progress"]["step"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(timeout=10)

    with running_server(tmp_path, base_model=str(base), job_lease_ms="1000") as server:
        client = httpx.Client(base_url=server.url)
        deadline = time.monotonic() + 20  # the dead process's lease lapses within a second
        while (after := client.get(f"/v1/fine-tuning/jobs/{job['id']}").json())["status"] == (
            "running"
        ):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert after["status"] == "failed" and after["error"]["code"] == "interrupted"
        response = client.get("/v1/adapters/victim")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "adapter_not_found"
        assert [a["name"] for a in client.get("/v1/adapters").json()["data"]] == [
            "earlier0",
            "earlier1",
        ]
    assert digests(store) == before  # nothing written for the job that never finished


def _upload(client: httpx.Client, name: str, rank: int, seed: int, sizes=(16, 8, 4)):
    targets = ["layer1", "layer2"]
    files = adapter_files(
        peft_config(rank, 8, targets), lora_tensors(list(sizes), targets, rank, seed)
    )
    return client.post(
        "/v1/adapters",
        params={"overwrite": "true"},
        data={"name": name},
        files={"config": ("c", files[0]), "weights": ("w", files[1])},
    )


def test_sigkill_during_uploads_and_merges_never_leaves_a_partial_adapter(tmp_path: Path) -> None:
    import threading

    sizes = (512, 512, 512)
    base = write_base_model(tmp_path / "base", sizes)
    store = tmp_path / "adapters"
    with (
        running_server(tmp_path, base_model=str(base), max_rank="512") as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        keep = _upload(client, "keep", 8, 0, sizes)
        assert keep.status_code == 201
    objects = store / ".store" / "default"
    kept = digests(objects / keep.json()["version"])
    for delay in (0.0, 0.02, 0.05, 0.1, 0.2):
        with running_server(tmp_path, base_model=str(base), max_rank="512") as server:
            client = httpx.Client(base_url=server.url, timeout=30)

            def busy(client: httpx.Client = client) -> None:
                # Big uploads over one name, and merged predictions, until the process dies.
                try:
                    for i in range(50):
                        _upload(client, "victim", 256, i, sizes)
                        x = torch.randn(2, sizes[0]).tolist()
                        client.post(
                            "/v1/predict", json={"inputs": x, "adapter": "victim", "mode": "merged"}
                        )
                except httpx.TransportError:
                    pass

            worker = threading.Thread(target=busy)
            worker.start()
            time.sleep(0.3 + delay)
            server.process.send_signal(signal.SIGKILL)
            server.process.wait(timeout=10)
            worker.join(timeout=30)
        with running_server(tmp_path, base_model=str(base), max_rank="512") as server:
            listed = {a["name"]: a for a in httpx.get(f"{server.url}/v1/adapters").json()["data"]}
            assert set(listed) <= {"keep", "victim"} and "keep" in listed
            # Whatever "victim" is now, it is whole: its files are the version it names, and
            # it serves.
            if "victim" in listed:
                archive = httpx.get(f"{server.url}/v1/adapters/victim/download").content
                files = zipfile.ZipFile(io.BytesIO(archive))
                pair = [files.read(n) for n in ("adapter_config.json", "adapter_model.safetensors")]
                assert version_id(*pair) == listed["victim"]["version"]
                x = torch.randn(2, sizes[0]).tolist()
                body = {"inputs": x, "adapter": "victim"}
                assert httpx.post(f"{server.url}/v1/predict", json=body).status_code == 200
        assert digests(objects / keep.json()["version"]) == kept


def test_sigterm_finishes_requests_in_flight_and_marks_the_running_job(tmp_path: Path) -> None:
    import threading

    from app.training import JobStore

    base = write_base_model(tmp_path / "base")
    with running_server(tmp_path, base_model=str(base)) as server:
        client = httpx.Client(base_url=server.url, timeout=30)
        data = save({"inputs": torch.randn(256, 16), "targets": torch.randn(256, 4)})
        train = client.post("/v1/datasets", files={"file": ("d", data)}).json()["id"]
        job = client.post(
            "/v1/fine-tuning/jobs",
            json={"adapter_name": "long", "training_dataset": train,
                  "hyperparameters": {"epochs": 1000, "batch_size": 1}},
        ).json()  # fmt: skip
        # Past its first step: the job's start-up (imports, planning) no longer competes with
        # the event loop, so the upload below is surely in flight when SIGTERM arrives.
        while (client.get(f"/v1/fine-tuning/jobs/{job['id']}").json()["progress"] or {}).get(
            "step", 0
        ) < 1:
            time.sleep(0.02)
        # A slow request (a big upload body, sent slowly) is in flight when SIGTERM arrives.
        targets = ["layer1", "layer2"]
        files = adapter_files(peft_config(4, 8, targets), lora_tensors([16, 8, 4], targets, 4, 1))
        answers: list[int] = []

        def slow_upload() -> None:
            def body():
                boundary = b"--xx\r\n"
                yield boundary + b'Content-Disposition: form-data; name="name"\r\n\r\nlate\r\n'
                time.sleep(1.0)
                yield (
                    boundary
                    + b'Content-Disposition: form-data; name="config"; filename="c"\r\n\r\n'
                    + files[0]
                    + b"\r\n"
                )
                yield (
                    boundary
                    + b'Content-Disposition: form-data; name="weights"; filename="w"\r\n\r\n'
                    + files[1]
                    + b"\r\n--xx--\r\n"
                )

            response = httpx.post(
                f"{server.url}/v1/adapters",
                content=body(),
                headers={"content-type": "multipart/form-data; boundary=xx"},
                timeout=30,
            )
            answers.append(response.status_code)

        uploader = threading.Thread(target=slow_upload)
        uploader.start()
        time.sleep(0.3)
        server.process.send_signal(signal.SIGTERM)
        uploader.join(timeout=30)
        assert server.process.wait(timeout=30) in (0, -signal.SIGTERM)
    assert answers == [201]
    state = Database(f"sqlite:///{tmp_path / 'data' / 'loraserve.db'}")
    with state.read() as conn:
        assert catalog.current(conn, "default", "late") is not None
    stopped = JobStore(state).get(job["id"])
    state.close()
    assert stopped.status == "failed" and stopped.error and stopped.error["code"] == "interrupted"
