"""Generation on compositions against the same load on single adapters (issue 29's decoder
target: 16 concurrent streams, each a composition of 2 rank-8 adapters, tokens/s at least 0.85x
the same load with one adapter each).

    .venv/bin/python bench/compose_generate.py [--duration 30] [--rounds 3] [--out FILE]

SmolLM2-135M-Instruct served as users run it (`loraserve serve`, LORASERVE_BASE_MODEL the .gguf,
default settings) on 127.0.0.1; 16 PEFT adapters of rank 8 on q/k/v/o_proj uploaded by POST;
wrk with 16 connections, POST /v1/completions of 64-token prompts and 128 new tokens (greedy,
ignore_eos), as bench/generate.py loads it:
  single    request i on adapter i (`model` names the adapter)
  composed  request i on `0.5 a_i + 0.5 a_(i+1)` (`model` the base, the extension field `lora`)
Both loads in turn, round after round; the ratio is the median of the rounds' ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import httpx
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# As bench/generate.py: bench/kernels.py must not shadow the `kernels` package transformers uses.
sys.path[:] = [str(ROOT), *(p for p in sys.path if Path(p or ".").resolve() != HERE)]

from app.client import Client  # noqa: E402
from app.families.decoder.gguf import converted_folder, known_gguf  # noqa: E402
from bench.generate_hf import write_adapters  # noqa: E402
from bench.generate_load import (  # noqa: E402
    COMPLETIONS,
    N_ADAPTERS,
    STREAMS,
    completion,
    drain_ours,
    prompts,
    served,
    wrk_load,
)
from bench.harness import bin_path, gguf_env, server  # noqa: E402

TARGET = 0.85


def bodies(texts: list[str], base: str, names: list[str]) -> dict[str, list[dict]]:
    single = [completion(t, names[i % len(names)]) for i, t in enumerate(texts)]
    composed = []
    for i, text in enumerate(texts):
        a, b = names[i % len(names)], names[(i + 1) % len(names)]
        lora = [{"name": a, "scale": 0.5}, {"name": b, "scale": 0.5}]
        composed.append({**completion(text, base), "lora": lora})
    return {"single": single, "composed": composed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=30, help="least seconds per wrk load")
    parser.add_argument("--max-duration", type=float, default=240, help="most seconds per load")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "loraserve-bench-models")  # fmt: skip
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = known_gguf("SmolLM2-135M-Instruct")
    assert gguf is not None
    folder = converted_folder(gguf, args.cache)
    texts = prompts(AutoTokenizer.from_pretrained(folder), STREAMS)
    tmp = Path(tempfile.mkdtemp(prefix="bench-compose-generate-"))
    try:
        reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        names = [f.name for f in write_adapters(reference, tmp / "peft", N_ADAPTERS)]
        del reference
        env = gguf_env(tmp, gguf, folder)
        with server([bin_path("loraserve"), "serve"], env) as url:
            base = httpx.get(f"{url}/v1/model").json()["name"]
            with Client(url) as client:
                for name in names:
                    client.upload_adapter(name, tmp / "peft" / name)
            loads = bodies(texts, base, names)

            async def warm() -> None:  # every adapter loaded, every composition made, stacked
                async with httpx.AsyncClient(timeout=300) as c:
                    for kind in loads:
                        answers = await asyncio.gather(*(
                            c.post(f"{url}{COMPLETIONS}", json={**b, "max_tokens": 2})
                            for b in loads[kind]
                        ))  # fmt: skip
                        assert all(a.status_code == 200 for a in answers), answers[0].text

            asyncio.run(warm())
            encoded = {k: [json.dumps(b).encode() for b in v] for k, v in loads.items()}
            rounds = []
            for i in range(args.rounds):
                one = {}
                for kind in ("single", "composed"):
                    before = served(url)
                    r = wrk_load(url, encoded[kind], args.duration, STREAMS, args.max_duration)
                    drain_ours(url, before + r["completed_in_all"] + STREAMS, 3 * r["seconds"] + 30)
                    one[kind] = r
                one["ratio"] = one["composed"]["tokens_per_s"] / one["single"]["tokens_per_s"]
                rounds.append(one)
                print(f"round {i + 1}: single {one['single']['tokens_per_s']:.1f}, composed "
                      f"{one['composed']['tokens_per_s']:.1f} tokens/s ({one['ratio']:.2f}x)", flush=True)  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "streams": STREAMS, "adapters": N_ADAPTERS, "rank": 8,
        "server": "loraserve serve, LORASERVE_BASE_MODEL the .gguf, default settings",
        "single_tokens_per_s": [r["single"]["tokens_per_s"] for r in rounds],
        "composed_tokens_per_s": [r["composed"]["tokens_per_s"] for r in rounds],
        "ratio": statistics.median(r["ratio"] for r in rounds), "target": TARGET,
        "rounds": rounds,
    }  # fmt: skip
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=2))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
