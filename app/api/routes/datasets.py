"""Training datasets: upload (safetensors file or JSON), list, read, delete."""

from __future__ import annotations

from dataclasses import asdict
from itertools import chain
from typing import Any

import numpy as np
import torch
from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from app.api.auth import ADMIN
from app.api.deps import Datasets, FamilyDep, ProjectDep, Training
from app.api.schemas import DatasetCreate, DatasetList, DatasetPublic, ErrorBody
from app.errors import InvalidInput, UnsupportedMediaType, shorten
from app.families.mlp.io import loads_strict
from app.training import DatasetRecord, DatasetStore

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], dependencies=ADMIN)
_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody} for code in (400, 404, 409, 413, 415, 422)
}
_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
            "application/json": {"schema": DatasetCreate.model_json_schema()},
        },
    }
}


def _public(record: DatasetRecord) -> DatasetPublic:
    return DatasetPublic(**asdict(record))


_TENSORS = ("inputs", "targets")
_PAIR_TYPES = ("application/json", "application/jsonl", "application/x-ndjson")


def _rows(value: Any, key: str) -> torch.Tensor:
    """A JSON list of equal-length rows of numbers as an (N, width) tensor; strings, booleans
    and numbers too large for a float are refused, not converted."""
    if not isinstance(value, list) or not all(isinstance(row, list) for row in value):
        raise InvalidInput(f"`{key}` must be a list of rows of numbers", key)
    if not value:
        raise InvalidInput(f"`{key}` has no rows", key)
    if len({len(row) for row in value}) > 1:
        raise InvalidInput(f"`{key}` rows must all have the same length", key)
    kinds = set(map(type, chain.from_iterable(value)))  # one pass in C; bool is not int here
    if not kinds <= {int, float}:
        wrong = ", ".join(sorted(k.__name__ for k in kinds - {int, float}))
        raise InvalidInput(f"`{key}` must hold only numbers, not {wrong}", key)
    try:
        array = np.asarray(value, dtype=np.float64)  # (N, width)
    except OverflowError as exc:  # an integer literal past float64, such as 1e400 written out
        raise InvalidInput(f"`{key}` holds a number too large for a float", key) from exc
    # float64 here; check_tensors refuses what is not finite once it is float32.
    return torch.from_numpy(array)


def _json_tensors(raw: bytes) -> dict[str, torch.Tensor]:
    """`{inputs, targets}` parsed strictly, off the event loop: orjson and numpy, not pydantic
    float by float (a JSON dataset can hold millions of numbers)."""
    body = loads_strict(raw, None)
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object {inputs, targets}", None)
    # Every other key goes through the strict schema, so its errors read as every route's do.
    try:
        DatasetCreate.model_validate({**body, **{k: [] for k in _TENSORS if k in body}})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidInput(f"{shorten(where)}: {first['msg']}", shorten(where)) from exc
    return {key: _rows(body[key], key) for key in _TENSORS}


def _create_from_json(datasets: DatasetStore, raw: bytes, project: str) -> DatasetRecord:
    return datasets.create(_json_tensors(raw), None, project)


async def _uploaded_file(request: Request) -> UploadFile:
    """The multipart body's one field, the file `file`; any other field is refused."""
    form = await request.form(max_files=2, max_fields=2)
    unknown = sorted(set(form.keys()) - {"file"})
    if unknown:
        await form.close()
        name = shorten(unknown[0])
        raise InvalidInput(f"unknown field {name!r}; the multipart body takes `file`", name)
    files = form.getlist("file")
    if len(files) != 1 or not isinstance(files[0], UploadFile):
        await form.close()
        raise InvalidInput("the multipart body needs one file field `file`", "file")
    return files[0]


@router.post(
    "",
    status_code=201,
    responses=_ERRORS,
    openapi_extra=_UPLOAD_BODY,
)
async def create_dataset(
    request: Request, datasets: Datasets, family: FamilyDep, project: ProjectDep
) -> DatasetPublic:
    """A multipart `file`, or the rows in the body.

    Vector bases: a safetensors file (`inputs`, `targets`), or JSON `{inputs, targets}`.
    Text bases: text pairs `{"anchor", "positive"}`, as a JSONL or JSON-array file or body.
    Decoder bases: SFT rows `{"messages": [...]}` or `{"prompt", "completion"}`, likewise.
    """
    content_type = request.headers.get("content-type", "")
    text = family.inputs == "texts"  # JSONL rows; vector bases take tensors
    if content_type.startswith("multipart/form-data"):
        file = await _uploaded_file(request)
        data = await file.read()
        record = await run_in_threadpool(datasets.create_from_bytes, data, file.filename, project)
    elif text and content_type.startswith(_PAIR_TYPES):
        body = await request.body()
        record = await run_in_threadpool(datasets.create_from_bytes, body, None, project)
    elif content_type.startswith("application/json") and not text:
        body = await request.body()
        record = await run_in_threadpool(_create_from_json, datasets, body, project)
    elif text:
        raise UnsupportedMediaType(
            "a text base takes text pairs, a decoder base chat rows: multipart/form-data with "
            "a JSONL or JSON `file`, "
            "or an application/json or application/jsonl body"
        )
    else:
        raise UnsupportedMediaType(
            "send multipart/form-data with a safetensors `file`, or application/json"
        )
    return _public(record)


@router.get("")
def list_datasets(datasets: Datasets, project: ProjectDep) -> DatasetList:
    return DatasetList(data=[_public(r) for r in datasets.list(project)])


@router.get("/{dataset_id}", responses=_ERRORS)
def read_dataset(dataset_id: str, datasets: Datasets, project: ProjectDep) -> DatasetPublic:
    return _public(datasets.get(dataset_id, project=project))


@router.delete("/{dataset_id}", status_code=204, responses=_ERRORS, response_class=Response)
def delete_dataset(dataset_id: str, training: Training, project: ProjectDep) -> Response:
    """409 while a queued or running job still uses it."""
    training.delete_dataset(dataset_id, project)
    return Response(status_code=204)
