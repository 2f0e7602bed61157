"""Training datasets: upload (safetensors file or JSON), list, read, delete."""

from __future__ import annotations

from dataclasses import asdict

import torch
from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from app.api.auth import ADMIN
from app.api.deps import Datasets, Training
from app.api.schemas import DatasetCreate, DatasetList, DatasetPublic, ErrorBody
from app.errors import InvalidInput, UnsupportedMediaType
from app.training import DatasetRecord

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], dependencies=ADMIN)
_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody} for code in (404, 409, 413, 415, 422)
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


def _json_tensors(raw: bytes) -> dict[str, torch.Tensor]:
    try:
        body = DatasetCreate.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from exc
    tensors = {}
    for key in ("inputs", "targets"):
        try:
            tensors[key] = torch.tensor(getattr(body, key), dtype=torch.float32)
        except ValueError as exc:  # ragged rows
            raise InvalidInput(f"`{key}` rows must all have the same length", key) from exc
    return tensors


@router.post("", status_code=201, responses=_ERRORS, openapi_extra=_UPLOAD_BODY)
async def create_dataset(request: Request, datasets: Datasets) -> DatasetPublic:
    """A multipart `file` (safetensors: `inputs`, `targets`), or JSON `{inputs, targets}`."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=1)
        file = form.get("file")
        if not isinstance(file, UploadFile):
            raise InvalidInput("the multipart body needs a file field `file`", "file")
        data = await file.read()
        record = await run_in_threadpool(datasets.create_from_bytes, data, file.filename)
    elif content_type.startswith("application/json"):
        tensors = _json_tensors(await request.body())
        record = await run_in_threadpool(datasets.create, tensors, None)
    else:
        raise UnsupportedMediaType(
            "send multipart/form-data with a safetensors `file`, or application/json"
        )
    return _public(record)


@router.get("")
def list_datasets(datasets: Datasets) -> DatasetList:
    return DatasetList(data=[_public(r) for r in datasets.list()])


@router.get("/{dataset_id}", responses=_ERRORS)
def read_dataset(dataset_id: str, datasets: Datasets) -> DatasetPublic:
    return _public(datasets.get(dataset_id))


@router.delete("/{dataset_id}", status_code=204, responses=_ERRORS, response_class=Response)
def delete_dataset(dataset_id: str, training: Training) -> Response:
    """409 while a queued or running job still uses it."""
    training.delete_dataset(dataset_id)
    return Response(status_code=204)
