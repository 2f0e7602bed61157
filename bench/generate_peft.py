"""The per-request PEFT baseline of bench/generate.py, as its own server."""

from __future__ import annotations

import asyncio
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request, Response
from pydantic import BaseModel

from bench.generate_load import COMPLETIONS


class PeftCompletion(BaseModel):
    model: str
    prompt: str
    max_tokens: int = 16
    temperature: float = 1.0
    ignore_eos: bool = False


def peft_app() -> Any:
    """The per-request PEFT baseline: `uvicorn bench.generate_peft:peft_app --factory`, with
    PEFT_BASE (a transformers folder) and PEFT_ADAPTERS (a folder of PEFT adapter folders).
    One request at a time (the active adapter is PEFT's global state); a request whose client
    left while it waited is skipped, as the service drops a gone stream."""
    # FastAPI reads the handlers' annotations as strings (this module's __future__ import), so
    # Request must be a module-level name for it to see the request parameter.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bench.peft_adapters import load_all

    folder = Path(os.environ["PEFT_BASE"])
    model = load_all(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    lock = asyncio.Lock()
    app = FastAPI()

    def generate(body: PeftCompletion) -> tuple[str, int, int]:
        ids = tokenizer(body.prompt, return_tensors="pt")["input_ids"]  # (1, T)
        named = body.model in model.peft_config
        if named:
            model.set_adapter(body.model)
        sample = (
            {"do_sample": True, "temperature": body.temperature}
            if body.temperature
            else {"do_sample": False}
        )
        with torch.inference_mode(), nullcontext() if named else model.disable_adapter():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 max_new_tokens=body.max_tokens,
                                 min_new_tokens=body.max_tokens if body.ignore_eos else None,
                                 pad_token_id=tokenizer.eos_token_id, **sample)  # fmt: skip
        new = out[0, ids.shape[1] :]
        return tokenizer.decode(new, skip_special_tokens=True), ids.shape[1], len(new)

    @app.get("/readyz")
    def ready() -> dict[str, str]:
        return {"status": "ready"}

    @app.post(COMPLETIONS)
    async def create_completion(body: PeftCompletion, request: Request) -> Any:
        async with lock:
            if await request.is_disconnected():
                return Response(status_code=499)
            text, prompt, new = await asyncio.to_thread(generate, body)
        return {"object": "text_completion", "model": body.model,
                "choices": [{"index": 0, "text": text, "finish_reason": "length"}],
                "usage": {"prompt_tokens": prompt, "completion_tokens": new,
                          "total_tokens": prompt + new}}  # fmt: skip

    return app
