"""Adapter uploads, listing, download and deletion."""

from __future__ import annotations

import io
import zipfile
from typing import Annotated

from fastapi import APIRouter, File, Form, Response, UploadFile
from fastapi.concurrency import run_in_threadpool

from app.adapters import AdapterRecord, AdapterRegistry
from app.api.auth import ADMIN, READ
from app.api.deps import PredictorDep, Registry
from app.api.schemas import AdapterList, AdapterPublic, ErrorBody
from app.engine import Predictor
from app.errors import InvalidAdapter

router = APIRouter(prefix="/v1/adapters", tags=["adapters"])
_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody} for code in (404, 409, 413, 422)
}


def _public(
    record: AdapterRecord, registry: AdapterRegistry, predictor: Predictor
) -> AdapterPublic:
    config = record.config
    return AdapterPublic(
        name=record.name,
        rank=config.r,
        alpha=config.lora_alpha,
        scaling=config.scaling_for(config.target_modules[0]),
        use_rslora=config.use_rslora,
        target_modules=list(config.target_modules),
        rank_pattern=config.rank_pattern,
        alpha_pattern=config.alpha_pattern,
        size_bytes=record.size_bytes,
        sha256=registry.sha256(record),
        created_at=record.created_at,
        source=record.source,
        residency="device" if registry.is_resident(record) else "disk",
        merged=predictor.is_merged(record.name, record.version),
    )


@router.post("", status_code=201, responses=_ERRORS, dependencies=ADMIN)
async def create_adapter(
    registry: Registry,
    predictor: PredictorDep,
    name: Annotated[str, Form(description="the adapter's name")],
    config: Annotated[UploadFile, File(description="adapter_config.json")],
    weights: Annotated[UploadFile, File(description="adapter_model.safetensors")],
    overwrite: bool = False,
) -> AdapterPublic:
    """Upload a PEFT adapter (multipart: name, config, weights); 409 if it exists."""
    if (weights.filename or "").endswith((".bin", ".pt", ".pth", ".ckpt")):
        raise InvalidAdapter(
            f"{weights.filename} is a pickle format; only safetensors is accepted", "weights"
        )
    config_data, weights_data = await config.read(), await weights.read()
    record = await run_in_threadpool(
        registry.upload, name, config_data, weights_data, overwrite=overwrite
    )
    return await run_in_threadpool(_public, record, registry, predictor)


@router.get("", dependencies=READ)
async def list_adapters(registry: Registry, predictor: PredictorDep) -> AdapterList:
    records = registry.list()
    data = await run_in_threadpool(lambda: [_public(r, registry, predictor) for r in records])
    return AdapterList(data=data)


@router.get("/{name}", responses=_ERRORS, dependencies=READ)
async def read_adapter(name: str, registry: Registry, predictor: PredictorDep) -> AdapterPublic:
    record = registry.get(name)
    return await run_in_threadpool(_public, record, registry, predictor)


@router.get(
    "/{name}/download",
    responses={200: {"content": {"application/zip": {}}}, **_ERRORS},
    response_class=Response,
    dependencies=READ,
)
async def download_adapter(name: str, registry: Registry) -> Response:
    """A zip of adapter_config.json and adapter_model.safetensors, loadable by PEFT."""
    files = await run_in_threadpool(registry.files, name)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for filename, data in files.items():
            archive.writestr(filename, data)
    return Response(
        buffer.getvalue(),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{name}.zip"'},
    )


@router.delete(
    "/{name}", status_code=204, responses=_ERRORS, response_class=Response, dependencies=ADMIN
)
async def delete_adapter(name: str, registry: Registry) -> Response:
    await run_in_threadpool(registry.delete, name)
    return Response(status_code=204)
