"""Every operation of the service, written once for the sync and the async client."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import torch
from safetensors.torch import save
from torch import Tensor

from app.client.wire import (
    OCTET,
    Messages,
    adapter_files,
    answer_data,
    answer_embeddings,
    answer_json,
    answer_outputs,
    dataset_file,
    generation_body,
    pairs_jsonl,
    stream_body,
    unzip_to,
)


class Operations:
    """Each operation: what to send, and how to read the answer."""

    def _request(
        self, method: str, path: str, read: Callable[[httpx.Response], Any], **kw: Any
    ) -> Any:
        raise NotImplementedError  # provided by Client and AsyncClient

    def health(self) -> Any:
        return self._request("GET", "/healthz", answer_json)

    def ready(self) -> Any:
        return self._request("GET", "/readyz", answer_json)

    def model(self) -> Any:
        return self._request("GET", "/v1/model", answer_json)

    def list_adapters(self) -> Any:
        return self._request("GET", "/v1/adapters", answer_data)

    def get_adapter(self, name: str) -> Any:
        return self._request("GET", f"/v1/adapters/{name}", answer_json)

    def upload_adapter(self, name: str, folder: str | Path, overwrite: bool = False) -> Any:
        """Upload a PEFT adapter folder (adapter_config.json + adapter_model.safetensors)."""
        params = {"overwrite": "true"} if overwrite else None
        files = adapter_files(folder)
        return self._request(
            "POST", "/v1/adapters", answer_json, data={"name": name}, files=files, params=params
        )

    def download_adapter(self, name: str, dest: str | Path) -> Any:
        """Write the adapter's two PEFT files into `dest`; returns the folder."""
        return self._request("GET", f"/v1/adapters/{name}/download", unzip_to(dest))

    def compose_adapter(
        self,
        name: str,
        sources: Composition,
        method: str = "cat",
        rank: int | None = None,
        density: float | None = None,
        seed: int | None = None,
        overwrite: bool = False,
    ) -> Any:
        """Save a composition of adapters ({name or name@version: scale}) as a new adapter: the
        adapter, or (a composition larger than the service's COMPOSE_INLINE_MAX_FLOPS) the job
        that makes it, `object` "composition.job" (follow it with `composition_job`)."""
        options = {"rank": rank, "density": density, "seed": seed}
        body = {
            "name": name,
            "sources": _wire_spec(sources),
            "method": method,
            **{k: v for k, v in options.items() if v is not None},
        }
        params = {"overwrite": "true"} if overwrite else None
        return self._request("POST", "/v1/adapters/compose", answer_json, json=body, params=params)

    def composition_job(self, job_id: str) -> Any:
        return self._request("GET", f"/v1/adapters/compose/jobs/{job_id}", answer_json)

    def cancel_composition_job(self, job_id: str) -> Any:
        return self._request("POST", f"/v1/adapters/compose/jobs/{job_id}/cancel", answer_json)

    def delete_adapter(self, name: str) -> Any:
        return self._request("DELETE", f"/v1/adapters/{name}", lambda r: None)

    def predict(
        self,
        inputs: Tensor | Sequence[Sequence[float]],
        adapter: str | Composition | None = None,
        adapters: Sequence[str | Composition | None] | None = None,
        mode: str = "auto",
    ) -> Any:
        """Outputs as a float32 tensor (N, output_dim); sent as safetensors, both ways.

        An adapter is a name, or a composition: {name: scale} (or (name, scale) pairs)."""
        x = inputs if isinstance(inputs, Tensor) else torch.tensor(inputs, dtype=torch.float32)
        if adapter is not None and not isinstance(adapter, str):  # the query takes names only
            adapters, adapter = [adapter] * len(x), None
        metadata = None
        if adapters is not None:
            metadata = {"adapters": json.dumps([_wire_spec(a) for a in adapters])}
        params = {"mode": mode, **({"adapter": adapter} if adapter else {})}
        return self._request(
            "POST", "/v1/predict", answer_outputs,
            content=save({"inputs": x.contiguous()}, metadata=metadata),
            params=params, headers={"content-type": OCTET, "accept": OCTET},
        )  # fmt: skip

    def embed(
        self,
        texts: str | Sequence[str],
        model: str | None = None,
        adapters: Sequence[str | Composition | None] | None = None,
        lora: Composition | None = None,
    ) -> Any:
        """Embeddings of a text base as a float32 tensor (N, dim), one row per text, in order.

        `model` names an adapter (None: the base); `adapters` gives one (or a composition) per
        text instead; `lora` a composition ({name: scale}) for every text.
        """
        body: dict[str, Any] = {"input": texts, "model": model}
        if adapters is not None:
            body["adapters"] = [_wire_spec(a) for a in adapters]
        if lora is not None:
            body["lora"] = _wire_spec(lora)
        return self._request("POST", "/v1/embeddings", answer_embeddings, json=body)

    def upload_pairs(
        self,
        pairs: Sequence[tuple[str, str] | dict[str, Any]] | str | Path,
        filename: str = "pairs.jsonl",
    ) -> Any:
        """A JSONL/JSON dataset file, sent unchanged, or rows: (anchor, positive) tuples, or
        dicts such as chat rows.

        Text bases take pairs {"anchor", "positive"}; decoder bases take chat rows
        {"messages": [...]} or {"prompt", "completion"}.
        """
        if isinstance(pairs, str | Path):
            filename, data = Path(pairs).name, Path(pairs).read_bytes()
        else:
            data = pairs_jsonl(pairs)
        return self._request(
            "POST", "/v1/datasets", answer_json, files=dataset_file(filename, data)
        )

    def chat(self, messages: Messages, model: str | None = None, **options: Any) -> Any:
        """OpenAI's chat answer: `model` an adapter (None: the base); options as the route's."""
        body = generation_body(model, options, messages=list(messages))
        return self._request("POST", "/v1/chat/completions", answer_json, json=body)

    def complete(
        self, prompt: str | Sequence[str], model: str | None = None, **options: Any
    ) -> Any:
        """OpenAI's completion answer for a prompt (or several), from `model` or the base."""
        body = generation_body(model, options, prompt=prompt)
        return self._request("POST", "/v1/completions", answer_json, json=body)

    def chat_stream(self, messages: Messages, model: str | None = None, **options: Any) -> Any:
        """The chat answer's text, one delta at a time as it is generated."""
        body = stream_body(model, options, messages=list(messages))
        return self._stream("/v1/chat/completions", body)

    def complete_stream(self, prompt: str, model: str | None = None, **options: Any) -> Any:
        """The completion's text, one delta at a time as it is generated."""
        return self._stream("/v1/completions", stream_body(model, options, prompt=prompt))

    def _stream(self, path: str, body: dict[str, Any]) -> Any:
        raise NotImplementedError  # provided by Client and AsyncClient

    def upload_dataset(
        self, inputs: Tensor, targets: Tensor, filename: str = "data.safetensors"
    ) -> Any:
        data = save({"inputs": inputs.contiguous(), "targets": targets.contiguous()})
        return self._request("POST", "/v1/datasets", answer_json, files={"file": (filename, data)})

    def list_datasets(self) -> Any:
        return self._request("GET", "/v1/datasets", answer_data)

    def delete_dataset(self, dataset_id: str) -> Any:
        return self._request("DELETE", f"/v1/datasets/{dataset_id}", lambda r: None)

    def create_job(
        self,
        adapter_name: str,
        training_dataset: str,
        validation_dataset: str | None = None,
        **hyperparameters: Any,
    ) -> Any:
        body = {
            "adapter_name": adapter_name,
            "training_dataset": training_dataset,
            "validation_dataset": validation_dataset,
            "hyperparameters": hyperparameters,
        }
        return self._request("POST", "/v1/fine-tuning/jobs", answer_json, json=body)

    def get_job(self, job_id: str) -> Any:
        return self._request("GET", f"/v1/fine-tuning/jobs/{job_id}", answer_json)

    def list_jobs(self, limit: int = 20, after: str | None = None) -> Any:
        params = {"limit": limit, **({"after": after} if after else {})}
        return self._request("GET", "/v1/fine-tuning/jobs", answer_json, params=params)

    def cancel_job(self, job_id: str) -> Any:
        return self._request("POST", f"/v1/fine-tuning/jobs/{job_id}/cancel", answer_json)

    def job_events(self, job_id: str, after: str | None = None, limit: int = 100) -> Any:
        params = {"limit": limit, **({"after": after} if after else {})}
        return self._request(
            "GET", f"/v1/fine-tuning/jobs/{job_id}/events", answer_json, params=params
        )


# A composition as callers write it: {name: scale}, or (name, scale) pairs.
Composition = Mapping[str, float] | Sequence[tuple[str, float]]


def _wire_spec(spec: str | Composition | None) -> Any:
    """A name or None as it is; a composition as the API's list of {"name", "scale"}."""
    if spec is None or isinstance(spec, str):
        return spec
    pairs = spec.items() if isinstance(spec, Mapping) else spec
    return [{"name": name, "scale": scale} for name, scale in pairs]
