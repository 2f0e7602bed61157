"""Predictions, each row with its own adapter or none."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from app.api.deps import Base, PredictorDep, SettingsDep
from app.api.schemas import ErrorBody, PredictRequest, PredictResponse
from app.engine.inputs import row_adapters, rows_to_tensor

router = APIRouter(tags=["predict"])


@router.post("/v1/predict", responses={c: {"model": ErrorBody} for c in (404, 413, 422)})
async def predict(
    body: PredictRequest, base: Base, predictor: PredictorDep, settings: SettingsDep
) -> PredictResponse:
    x = rows_to_tensor(body.inputs, base.input_dim, settings.max_request_rows)
    names, param = row_adapters(body.adapter, body.adapters, len(body.inputs))
    y, used = await run_in_threadpool(predictor.predict, x, names, body.mode, param)
    return PredictResponse(outputs=y.tolist(), mode=used)
