"""The per-request PEFT baseline for bench/embeddings_service.py, on a text base.

`uvicorn bench.peft_embed_server:app` with PEFT_BASE (a Hugging Face folder, or a packaged name
such as all-MiniLM-L6-v2) and PEFT_ADAPTERS (a folder of PEFT adapter folders). Each request:
`set_adapter(model)`, tokenize, one forward, mean pooling and normalization as the model's
sentence-transformers config says, one request at a time (PEFT's active adapter is global
state, so requests cannot overlap).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from fastapi import FastAPI
from peft import PeftModel
from pydantic import BaseModel
from transformers import AutoModel, AutoTokenizer

from app.families.encoder.model import known_model_folder
from bench.peft_adapters import load_all


class EmbeddingsBody(BaseModel):
    model: str
    input: list[str]


def _folder() -> Path:
    name = os.environ["PEFT_BASE"]
    return known_model_folder(name) or Path(name)


def _load() -> PeftModel:
    base = AutoModel.from_pretrained(_folder(), local_files_only=True)
    return load_all(base)


app = FastAPI()
model = _load()
tokenizer = AutoTokenizer.from_pretrained(_folder(), local_files_only=True)
lock = asyncio.Lock()


@app.get("/readyz")
def ready() -> dict[str, str]:
    return {"status": "ready"}


@app.post("/v1/embeddings")
async def embeddings(body: EmbeddingsBody) -> dict[str, object]:
    async with lock:
        enc = tokenizer(body.input, padding=True, truncation=True, max_length=256,
                        return_tensors="pt")  # fmt: skip
        with torch.inference_mode():
            if body.model in model.peft_config:
                model.set_adapter(body.model)
                states = model(**enc).last_hidden_state  # (N, T, d)
            else:  # the base model's name: no adapter
                with model.disable_adapter():
                    states = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(states.dtype)
        pooled = F.normalize((states * mask).sum(1) / mask.sum(1), dim=1)
        data = [{"object": "embedding", "index": i, "embedding": row} for i, row in
                enumerate(pooled.tolist())]  # fmt: skip
        return {"object": "list", "data": data, "model": body.model}
