"""bench/generate.py's in-process transformers parts: the HF anchor, a prefill's time, and the 16
PEFT adapters every server of the run serves."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from bench.generate_load import NEW_TOKENS, RANK, TARGETS


def hf_generate(model: Any, batch: torch.Tensor) -> dict[str, float]:
    """`generate` tokens/s on the static batch `batch` (B, T), NEW_TOKENS each."""
    kw = {"do_sample": False, "pad_token_id": model.config.eos_token_id}
    load = os.getloadavg()[0]
    with torch.inference_mode():
        start = time.perf_counter()
        new = model.generate(batch, attention_mask=torch.ones_like(batch),
                             max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, **kw)  # fmt: skip
        seconds = time.perf_counter() - start
    tokens = (new.shape[1] - batch.shape[1]) * batch.shape[0]
    return {"tokens_per_s": tokens / seconds, "requests": batch.shape[0], "seconds": seconds,
            "load_avg": load}  # fmt: skip


def prefill_ms(model: Any, ids: torch.Tensor, runs: int = 5) -> float:
    """Median time of one forward over a prompt (1, T), its KV cache kept (a prefill)."""
    times = []
    with torch.inference_mode():
        for _ in range(runs + 1):
            start = time.perf_counter()
            model(ids, use_cache=True)
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times[1:])


def write_adapters(model: Any, root: Path, n: int) -> list[Path]:
    """n PEFT adapter folders from `model` (wrapped in place): A as PEFT draws it, B small."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=TARGETS)
    peft_model = get_peft_model(model, config)
    torch.manual_seed(0)
    folders = []
    for i in range(n):
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_A" in name:
                    torch.nn.init.kaiming_uniform_(p, a=5**0.5)
                elif "lora_B" in name:
                    p.normal_(0, 0.02)
        folder = root / f"a{i:02d}"
        peft_model.save_pretrained(str(folder))
        folders.append(folder)
    return folders
