"""Adapter uploads, listing, download and deletion."""

from __future__ import annotations

import io
import zipfile
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BeforeValidator
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException

from app.adapters import AdapterRecord, AdapterRegistry
from app.adapters import peft_format as fmt
from app.adapters.peft_format import NAME_RE
from app.api.auth import ADMIN, READ
from app.api.deps import PredictorDep, ProjectDep, Registry
from app.api.schemas import (
    AdapterLayerPublic,
    AdapterList,
    AdapterProblemPublic,
    AdapterPublic,
    AdapterVersionList,
    AdapterVersionPublic,
    ErrorBody,
)
from app.engine import Predictor
from app.errors import InvalidAdapter, InvalidInput, MalformedBody, UnsupportedMediaType, shorten
from app.lora import LoraConfig, lora_scaling

router = APIRouter(prefix="/v1/adapters", tags=["adapters"])
_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody} for code in (404, 409, 413, 422)
}
_UPLOAD_FIELDS = ("name", "config", "weights")
_MAX_NAME_PART = 16 * 1024  # room to refuse a long name with a clear 422, not a parser error
_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "name": {
                            "type": "string",
                            "pattern": NAME_RE.pattern,
                            "description": "the adapter's name",
                        },
                        "config": {
                            "type": "string",
                            "format": "binary",
                            "description": "adapter_config.json",
                        },
                        "weights": {
                            "type": "string",
                            "format": "binary",
                            "description": "adapter_model.safetensors",
                        },
                    },
                    "required": list(_UPLOAD_FIELDS),
                    "additionalProperties": False,
                }
            }
        },
    }
}


def _strict_bool(value: object) -> object:
    """Only `true` or `false`: `?overwrite=yes` or `=1` is a mistake, not a yes."""
    if isinstance(value, str) and value not in ("true", "false"):
        raise ValueError("must be true or false")
    return value


StrictQueryBool = Annotated[bool, BeforeValidator(_strict_bool)]


# AdapterPublic's fields that come from adapter_config.json (null for a broken adapter).
_CONFIG_FIELDS = "rank alpha scaling use_rslora target_modules rank_pattern alpha_pattern layers"


def _config_fields(config: LoraConfig | None) -> dict[str, Any]:
    """The fields read from adapter_config.json; all null when it could not be parsed."""
    if config is None:
        return dict.fromkeys(_CONFIG_FIELDS.split())
    return {
        "rank": config.r,
        "alpha": config.lora_alpha,
        "scaling": lora_scaling(config.lora_alpha, config.r, config.use_rslora),
        "use_rslora": config.use_rslora,
        "target_modules": list(config.target_modules),
        "rank_pattern": config.rank_pattern,
        "alpha_pattern": config.alpha_pattern,
        "layers": [
            AdapterLayerPublic(
                module=m,
                rank=config.rank_for(m),
                alpha=config.alpha_for(m),
                scaling=config.scaling_for(m),
            )
            for m in config.target_modules
        ],
    }


def adapter_public(
    record: AdapterRecord, registry: AdapterRegistry, predictor: Predictor
) -> AdapterPublic:
    error = record.error
    return AdapterPublic(
        name=record.name,
        version=record.version,
        status=record.status,
        error=None
        if error is None
        else AdapterProblemPublic(code=error.code, message=error.message),
        **_config_fields(record.config),
        size_bytes=record.size_bytes,
        sha256=record.sha256,
        uploaded_sha256=record.uploaded_sha256,
        created_at=record.created_at,
        source=record.source,
        residency="device" if registry.is_resident(record) else "disk",
        merged=predictor.is_merged(record.version),
    )


async def _upload_form(request: Request) -> FormData:
    """The multipart body, parsed only now that auth has passed; 400 if it cannot be parsed."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise UnsupportedMediaType(
            "send multipart/form-data with the fields name, config and weights"
        )
    try:
        return await request.form(max_files=2, max_fields=2, max_part_size=_MAX_NAME_PART)
    except HTTPException as exc:  # starlette's answer to a malformed body; a 413 passes
        if exc.status_code != 400:
            raise
        raise MalformedBody(f"the multipart body cannot be parsed: {exc.detail}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedBody(f"the multipart body cannot be parsed: {shorten(str(exc))}") from exc


def _upload_fields(form: FormData) -> tuple[str, UploadFile, UploadFile]:
    """name (a field), config and weights (files), each exactly once and nothing else."""
    for key in form:
        if key not in _UPLOAD_FIELDS:
            raise InvalidInput(
                f"unknown form field {shorten(key)!r}; the upload takes name, config, weights",
                shorten(key),
            )
    values = {}
    for key in _UPLOAD_FIELDS:
        found = form.getlist(key)
        if len(found) != 1:
            what = "is missing" if not found else f"is given {len(found)} times"
            raise InvalidInput(f"form field {key!r} {what}", key)
        values[key] = found[0]
    name, config, weights = values["name"], values["config"], values["weights"]
    if not isinstance(name, str):
        raise InvalidInput("form field 'name' must be a plain field, not a file", "name")
    if not isinstance(config, UploadFile):
        raise InvalidInput("form field 'config' must be a file (adapter_config.json)", "config")
    if not isinstance(weights, UploadFile):
        raise InvalidInput("form field 'weights' must be a file (a safetensors file)", "weights")
    return name, config, weights


@router.post(
    "",
    status_code=201,
    responses={400: {"model": ErrorBody}, 415: {"model": ErrorBody}, **_ERRORS},
    dependencies=ADMIN,
    openapi_extra=_UPLOAD_BODY,
)
async def create_adapter(
    request: Request,
    registry: Registry,
    predictor: PredictorDep,
    project: ProjectDep,
    overwrite: Annotated[
        StrictQueryBool, Query(description="true replaces an adapter of that name")
    ] = False,
) -> AdapterPublic:
    """Upload a PEFT adapter (multipart: name, config, weights); 409 if it exists.

    The body is read here, after the dependencies (auth first) have run: FastAPI would read
    declared Form/File parameters before them.
    """
    form = await _upload_form(request)
    try:
        name, config, weights = _upload_fields(form)
        if (weights.filename or "").endswith((".bin", ".pt", ".pth", ".ckpt")):
            raise InvalidAdapter(
                f"{shorten(weights.filename)} is a pickle format; only safetensors is accepted",
                "weights",
            )
        config_data, weights_data = await config.read(), await weights.read()
    finally:
        await form.close()  # the spooled temporary files
    record = await run_in_threadpool(
        registry.upload, name, config_data, weights_data, overwrite=overwrite, project=project
    )
    return await run_in_threadpool(adapter_public, record, registry, predictor)


@router.get("", dependencies=READ)
async def list_adapters(
    registry: Registry, predictor: PredictorDep, project: ProjectDep
) -> AdapterList:
    records = await run_in_threadpool(registry.list, project)
    return AdapterList(data=[adapter_public(r, registry, predictor) for r in records])


@router.get("/{name}", responses=_ERRORS, dependencies=READ)
async def read_adapter(
    name: str, registry: Registry, predictor: PredictorDep, project: ProjectDep
) -> AdapterPublic:
    record = await run_in_threadpool(registry.get, name, "name", project)
    return adapter_public(record, registry, predictor)


@router.get("/{name}/versions", responses=_ERRORS, dependencies=READ)
async def list_adapter_versions(
    name: str, registry: Registry, project: ProjectDep
) -> AdapterVersionList:
    """Every version the name has served, newest first; the first is the current one."""
    history = await run_in_threadpool(registry.history, name, project)
    return AdapterVersionList(
        data=[
            AdapterVersionPublic(
                version=record.version,
                current=i == 0,
                served_from=served_from,
                created_at=record.created_at,
                size_bytes=record.size_bytes,
                sha256=record.sha256,
                source=record.source,
            )
            for i, (record, served_from) in enumerate(history)
        ]
    )


@router.get(
    "/{name}/download",
    responses={200: {"content": {"application/zip": {}}}, **_ERRORS},
    response_class=Response,
    dependencies=READ,
)
async def download_adapter(name: str, registry: Registry, project: ProjectDep) -> Response:
    """A zip of adapter_config.json and adapter_model.safetensors, loadable by PEFT."""
    fmt.check_name(name)
    files = await run_in_threadpool(registry.files, name, project)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for filename, data in files.items():
            # A fixed timestamp (zip's epoch): one version downloads as the same bytes from
            # every replica at any time, as its id promises (writestr would stamp "now").
            entry = zipfile.ZipInfo(filename, date_time=(1980, 1, 1, 0, 0, 0))
            entry.external_attr = 0o644 << 16
            archive.writestr(entry, data)
    return Response(
        buffer.getvalue(),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{name}.zip"'},
    )


@router.delete(
    "/{name}", status_code=204, responses=_ERRORS, response_class=Response, dependencies=ADMIN
)
async def delete_adapter(name: str, registry: Registry, project: ProjectDep) -> Response:
    await run_in_threadpool(registry.delete, name, project)
    return Response(status_code=204)
