"""The per-request PEFT baseline for bench/serve.py (as in the S-LoRA paper's PEFT baseline).

`uvicorn bench.peft_server:app` with PEFT_BASE (a base model folder) and PEFT_ADAPTERS (a folder
of PEFT adapter folders). Each request: pydantic parsing, `set_adapter(name)`, one forward, one
request at a time (PEFT's active adapter is global state, so requests cannot overlap).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import torch
from fastapi import FastAPI
from peft import PeftModel
from pydantic import BaseModel
from safetensors.torch import load_file

from app.families.mlp.config import ModelConfig
from app.families.mlp.module import build_module
from bench.peft_adapters import load_all


class PredictBody(BaseModel):
    inputs: list[list[float]]
    adapter: str | None = None


def _load() -> PeftModel:
    # The plain module, as a PEFT user has it (the service's loader wraps its layers for itself).
    folder = Path(os.environ["PEFT_BASE"])
    base = build_module(ModelConfig.load(folder))
    base.load_state_dict(load_file(folder / "model.safetensors"))
    return load_all(base)


app = FastAPI()
model = _load()
lock = asyncio.Lock()


@app.get("/readyz")
def ready() -> dict[str, str]:
    return {"status": "ready"}


@app.post("/v1/predict")
async def predict(body: PredictBody) -> dict[str, list[list[float]]]:
    async with lock:
        x = torch.tensor(body.inputs)
        with torch.inference_mode():
            if body.adapter is None:
                with model.disable_adapter():
                    y = model(x)
            else:
                model.set_adapter(body.adapter)
                y = model(x)
        return {"outputs": y.tolist()}
