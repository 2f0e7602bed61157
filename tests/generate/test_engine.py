"""GenerationEngine against transformers' and PEFT's own generate; batching, admission, limits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from app.adapters import AdapterRegistry
from app.engine import Predictor
from app.errors import InvalidInput, QueueFull
from app.generate.engine import GenerationEngine
from app.generate.sampling import SamplingParams
from app.model import load_base_model
from app.state.open import base_info

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


def _hf_model(folder: Path) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    # ignore_eos: the reference neither stops at nor suppresses the end token.
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model.eval()


def _peft_adapter(base_folder: Path, out: Path, seed: int, lora: dict[str, Any]) -> Any:
    """A PEFT model with random lora_B (PEFT starts it at zero), saved as PEFT saves it."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(_hf_model(base_folder), LoraConfig(**lora))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    peft_model.save_pretrained(out)
    return peft_model.eval()


def _hf_generate(model: Any, prompt: list[int]) -> list[int]:
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

    def engine(self, **overrides: Any) -> GenerationEngine:
        args: dict[str, Any] = {
            "kv_cache_bytes": 1 << 24, "max_running_seqs": 8, "prefill_chunk_tokens": 16,
            "max_waiting_seqs": 16, "queue_timeout_s": 30.0,
        }  # fmt: skip
        args.update(overrides)
        return GenerationEngine(Predictor(self.base, self.registry, 1 << 30), **args)

    def encode(self, text: str) -> list[int]:
        return list(self.base.causal.encode(text))


@pytest.fixture(scope="module")
def served(causal_folders, tmp_path_factory) -> dict[str, Served]:
    """Each layout's base loaded in the service, with its PEFT adapters registered."""
    root = tmp_path_factory.mktemp("served")
    out = {}
    for layout, folder in causal_folders.items():
        base = load_base_model(folder, CPU)
        registry = AdapterRegistry.local(root / layout, base_info(base), 64, 1 << 30)
        out[layout] = Served(folder, base, registry, {}, {})
    for i, (name, (layout, lora)) in enumerate(ADAPTERS.items()):
        s = out[layout]
        saved = root / "peft" / name
        s.peft[name] = _peft_adapter(s.folder, saved, seed=100 + i, lora=lora)
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


def _start(engines: list[GenerationEngine], engine: GenerationEngine) -> GenerationEngine:
    engine.start()
    engines.append(engine)
    return engine


async def _tokens(
    engine: GenerationEngine, prompt: list[int], version: str | None, params=GREEDY, mode="auto"
) -> list[int]:
    tokens: list[int] = []
    finish = None
    async for event in engine.generate(prompt, version, params, mode):
        tokens += [c.token for c in event.tokens]
        finish = event.finish_reason
    assert finish == ("length" if params.ignore_eos else finish)
    return tokens


def _run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


@pytest.mark.parametrize("layout", ["llama", "qwen2", "gpt2"])
def test_greedy_base_equals_transformers_generate(served, engines, layout) -> None:
    s = served[layout]
    engine = _start(engines, s.engine())
    hf = _hf_model(s.folder)
    for text in PROMPTS:
        prompt = s.encode(text)
        assert _run(_tokens(engine, prompt, None)) == _hf_generate(hf, prompt), text


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_greedy_adapter_equals_peft_generate(served, engines, name) -> None:
    s = served[ADAPTERS[name][0]]
    version = s.versions[name]
    assert not version.startswith("upload failed"), version
    engine = _start(engines, s.engine())
    hf = _hf_model(s.folder)
    for text in PROMPTS:
        prompt = s.encode(text)
        ours = _run(_tokens(engine, prompt, version))
        assert ours == _hf_generate(s.peft[name], prompt), text
        assert ours != _hf_generate(hf, prompt)  # the adapter really changes the output


@pytest.mark.parametrize("mode", ["auto", "merged", "unmerged"])
def test_a_batch_on_one_adapter_equals_peft_in_every_mode(served, engines, mode) -> None:
    s = served["llama"]
    engine = _start(engines, s.engine())
    prompts = [s.encode(t) for t in PROMPTS]

    async def both() -> list[list[int]]:
        return await asyncio.gather(
            *(_tokens(engine, p, s.versions["r8-all"], mode=mode) for p in prompts)
        )

    for prompt, ours in zip(prompts, _run(both()), strict=True):
        assert ours == _hf_generate(s.peft["r8-all"], prompt)


def test_a_mixed_batch_equals_each_sequence_alone(served, engines) -> None:
    s = served["llama"]
    engine = _start(engines, s.engine(prefill_chunk_tokens=8))
    chat = s.base.causal.apply_chat_template([{"role": "user", "content": PROMPTS[1]}])
    jobs = [
        (s.encode(PROMPTS[0]), "r4", 0.0),
        (chat, None, 0.0),
        (s.encode(PROMPTS[1]), "rslora", 0.01),
        (s.encode(PROMPTS[2]), "pattern", 0.02),
        (s.encode(PROMPTS[2]), None, 0.03),
        (chat, "r8-all", 0.05),
        (s.encode(PROMPTS[0]), "r4", 0.08),
    ]

    async def one(prompt: list[int], name: str | None, delay: float) -> list[int]:
        await asyncio.sleep(delay)  # join the running batch at a later step
        return await _tokens(engine, prompt, s.versions[name] if name else None)

    async def together() -> list[list[int]]:
        return await asyncio.gather(*(one(*job) for job in jobs))

    mixed = _run(together())
    steps = engine.steps
    for (prompt, name, _), tokens in zip(jobs, mixed, strict=True):
        alone = _run(_tokens(engine, prompt, s.versions[name] if name else None))
        assert tokens == alone, (name, len(prompt))
    assert steps < len(jobs) * NEW  # the sequences did share steps
    assert engine.cache.used_slots == 0


async def _wait_until(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


def test_a_client_that_goes_away_frees_its_slot(served, engines) -> None:
    s = served["llama"]
    engine = _start(engines, s.engine())

    async def leave_early() -> None:
        stream = engine.generate(s.encode(PROMPTS[0]), None, SamplingParams(200, ignore_eos=True))
        for _ in range(2):
            await anext(stream)
        assert engine.cache.used_slots == 1
        await stream.aclose()
        await _wait_until(lambda: engine.cache.used_slots == 0 and engine.running == 0)

    _run(leave_early())


def test_a_request_waits_for_kv_room_and_the_queue_is_bounded(served, engines) -> None:
    s = served["llama"]
    prompt = s.encode(PROMPTS[0])
    long = SamplingParams(200, temperature=0, ignore_eos=True)
    per_token = 2 * 2 * 2 * 8 * 4  # K and V, 2 layers, 2 KV heads of 8, float32
    engine = _start(
        engines,
        s.engine(kv_cache_bytes=int(1.5 * (len(prompt) + 200) * per_token), max_waiting_seqs=1),
    )
    assert engine.cache.bytes_per_token == per_token
    order: list[str] = []

    async def collect(tag: str, params: SamplingParams) -> list[int]:
        tokens = []
        async for event in engine.generate(prompt, None, params):
            order.append(tag)
            tokens += [c.token for c in event.tokens]
        return tokens

    async def scenario() -> tuple[list[int], list[int]]:
        first = asyncio.create_task(collect("first", long))
        await _wait_until(lambda: "first" in order)
        second = asyncio.create_task(collect("second", long))
        await _wait_until(lambda: engine.waiting == 1)
        assert engine.running == 1  # no room for the second beside the first
        with pytest.raises(QueueFull):
            await anext(engine.generate(prompt, None, long))
        return await first, await second

    a, b = _run(scenario())
    assert a == b and len(a) == 200
    assert order.index("second") > len(order) - order[::-1].index("first") - 1  # after the first


def test_a_request_over_the_context_is_invalid(served, engines) -> None:
    s = served["llama"]
    engine = _start(engines, s.engine())
    prompt = s.encode(PROMPTS[1])
    context = s.base.causal.context_length
    with pytest.raises(InvalidInput):
        _run(anext(engine.generate(prompt, None, SamplingParams(context - len(prompt) + 1))))
    assert (
        len(_run(_tokens(engine, prompt, None, SamplingParams(4, temperature=0, ignore_eos=True))))
        == 4
    )


def test_seeded_sampling_repeats(served, engines) -> None:
    s = served["llama"]
    engine = _start(engines, s.engine())
    prompt = s.encode(PROMPTS[0])
    params = SamplingParams(NEW, temperature=1.0, top_p=0.9, top_k=20, seed=7, ignore_eos=True)
    first = _run(_tokens(engine, prompt, s.versions["r4"], params))
    second = _run(_tokens(engine, prompt, s.versions["r4"], params))
    assert first == second and len(first) == NEW
