"""The engine tests' world: tiny bases of each layout served with PEFT adapters, and helpers
to run engines on them (the fixtures reach the tests through conftest.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from app.adapters import AdapterRegistry, base_info
from app.engine import Predictor
from app.families import load_family
from app.families.decoder.family import DecoderFamily
from app.families.decoder.generate.engine import GenerationEngine
from app.families.decoder.generate.sampling import SamplingParams
from app.families.decoder.model import CausalInfo

CPU = torch.device("cpu")
NEW = 32
GREEDY = SamplingParams(NEW, temperature=0, ignore_eos=True)
LLAMA_ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# name -> (layout, LoraConfig kwargs)
ADAPTERS: dict[str, tuple[str, dict[str, Any]]] = {
    "r4": ("llama", {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}),
    "r8-all": ("llama", {"r": 8, "lora_alpha": 3, "target_modules": LLAMA_ALL}),
    "rslora": (
        "llama",
        {"r": 16, "lora_alpha": 8, "use_rslora": True, "target_modules": LLAMA_ALL[:4]},
    ),
    "pattern": (
        "llama",
        {
            "r": 4,
            "lora_alpha": 16,
            "target_modules": LLAMA_ALL,
            "rank_pattern": {"o_proj": 2, "down_proj": 8},
            "alpha_pattern": {"gate_proj": 5},
        },
    ),
    "qwen": ("qwen2", {"r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "k_proj", "up_proj"]}),
    "gpt2": (
        "gpt2",
        {"r": 4, "lora_alpha": 6, "target_modules": ["c_attn", "c_proj"], "fan_in_fan_out": True},
    ),
}
PROMPTS = [
    "The capital of France is",
    "Hello world, how are you today? I am fine, thank you. LoRA adapters are low rank updates",
    "0 1 2",
]


def hf_model(folder: Path) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    # ignore_eos: the reference neither stops at nor suppresses the end token.
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model.eval()


def peft_adapter(base_folder: Path, out: Path, seed: int, lora: dict[str, Any]) -> Any:
    """A PEFT model with random lora_B (PEFT starts it at zero), saved as PEFT saves it."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(hf_model(base_folder), LoraConfig(**lora))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    peft_model.save_pretrained(out)
    return peft_model.eval()


def hf_generate(model: Any, prompt: list[int]) -> list[int]:
    with torch.inference_mode():
        out = model.generate(
            input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            do_sample=False, max_new_tokens=NEW, min_new_tokens=NEW,
        )  # fmt: skip
    return out[0, len(prompt) :].tolist()


@dataclass
class Served:
    folder: Path
    base: Any
    registry: AdapterRegistry
    versions: dict[str, str]
    peft: dict[str, Any]
    causal: CausalInfo  # the family's tokenizer, template and limits

    def engine(self, **overrides: Any) -> GenerationEngine:
        args: dict[str, Any] = {
            "kv_cache_bytes": 1 << 24, "max_running_seqs": 8, "prefill_chunk_tokens": 16,
            "max_waiting_seqs": 16, "queue_timeout_s": 30.0,
        }  # fmt: skip
        args.update(overrides)
        return GenerationEngine(Predictor(self.base, self.registry, 1 << 30), self.causal, **args)

    def encode(self, text: str) -> list[int]:
        return list(self.causal.encode(text))


@pytest.fixture(scope="module")
def served(causal_folders, tmp_path_factory) -> dict[str, Served]:
    """Each layout's base loaded in the service, with its PEFT adapters registered."""
    root = tmp_path_factory.mktemp("served")
    out = {}
    for layout, folder in causal_folders.items():
        family = load_family(folder, CPU)
        assert isinstance(family, DecoderFamily)
        registry = AdapterRegistry.local(root / layout, base_info(family.base), 64, 1 << 30)
        out[layout] = Served(folder, family.base, registry, {}, {}, family.causal)
    for i, (name, (layout, lora)) in enumerate(ADAPTERS.items()):
        s = out[layout]
        saved = root / "peft" / name
        s.peft[name] = peft_adapter(s.folder, saved, seed=100 + i, lora=lora)
        try:
            record = s.registry.upload(
                name,
                (saved / "adapter_config.json").read_bytes(),
                (saved / "adapter_model.safetensors").read_bytes(),
            )
            s.versions[name] = record.version
        except Exception as exc:  # reported by the test that uses it, not by every test
            s.versions[name] = f"upload failed: {exc!r}"
    return out


@pytest.fixture
def engines() -> Iterator[list[GenerationEngine]]:
    started: list[GenerationEngine] = []
    yield started
    for engine in started:
        engine.stop()


def start(engines: list[GenerationEngine], engine: GenerationEngine) -> GenerationEngine:
    engine.start()
    engines.append(engine)
    return engine


async def run_tokens(
    engine: GenerationEngine, prompt: list[int], version: str | None, params=GREEDY, mode="auto"
) -> list[int]:
    tokens: list[int] = []
    finish = None
    async for event in engine.generate(prompt, version, params, mode):
        tokens += [c.token for c in event.tokens]
        finish = event.finish_reason
    # An answer ends by its length (always, when eos is ignored) or by a stop, never otherwise.
    assert finish == "length" if params.ignore_eos else finish in ("stop", "length")
    if finish == "length":
        assert len(tokens) == params.max_tokens
    else:
        assert len(tokens) <= params.max_tokens
    return tokens


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))
