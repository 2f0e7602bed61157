"""The chat example, end to end over HTTP: `python -m app.cli.examples.chat --url http://127.0.0.1:8000`.

It needs a decoder base with a chat template (`loraserve serve --base-model SmolLM2-135M-Instruct`).
The same team jargon as the text example (app/cli/examples/text.py): made-up words for colours, things
and places. Asked to translate "zovob zigit vupuk", the base model cannot know it means "a red
chair in the garage"; an adapter trained by the service (SFT) on 256 phrases translates phrases
it never saw, because it learned the words, not the rows. Base vs adapter exact match of greedy
answers on held-out phrases, through HTTP only.
"""

from __future__ import annotations

import argparse
import json
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from app.cli.base import demo_main
from app.cli.examples.text import add_demo_arguments, follow_job, jargon_pairs
from app.client import Client

Print = Callable[[str], None]
SYSTEM = "Translate Zorblish to English."
SIZES = {"train": 256, "validation": 32, "test": 64}
# All seven projections: the mapping of words is stored in the MLPs more than in attention.
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def chat_rows(seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """The jargon phrases as chats {system, user: phrase, assistant: meaning}, per split."""

    def row(phrase: str, meaning: str) -> dict[str, Any]:
        turns = [("system", SYSTEM), ("user", phrase), ("assistant", meaning)]
        return {"messages": [{"role": r, "content": c} for r, c in turns]}

    splits = jargon_pairs(seed)
    return {k: [row(*p) for p in splits[k][:n]] for k, n in SIZES.items()}


def exact_match(client: Client, rows: list[dict[str, Any]], model: str | None) -> float:
    """How often the greedy answer to a row's question is exactly its reference.

    The questions go 16 at a time, as concurrent users would: the service batches them.
    """

    def hit(row: dict[str, Any]) -> bool:
        *question, reference = row["messages"]
        answer = client.chat(question, model, temperature=0, max_tokens=24)
        return bool(answer["choices"][0]["message"]["content"].strip() == reference["content"])

    with ThreadPoolExecutor(16) as pool:
        return sum(pool.map(hit, rows)) / len(rows)


def run_chat_demo(
    client: Client,
    epochs: int = 2,
    learning_rate: float = 2e-3,
    adapter_name: str | None = None,
    out: Print = print,
) -> dict[str, float]:
    """Train a jargon chat adapter through the service; base and adapter exact match on the test."""
    model = client.model()
    if model.get("family") != "causal_lm" or not model.get("chat_template"):
        raise SystemExit(
            "error: the chat demo needs a decoder base with a chat template "
            "(loraserve serve --base-model SmolLM2-135M-Instruct)"
        )
    splits = chat_rows()
    test = splits["test"]
    out(f"jargon chats: {', '.join(f'{len(v)} {k}' for k, v in splits.items())}")
    train = client.upload_pairs(splits["train"], "jargon-chat-train.jsonl")["id"]
    validation = client.upload_pairs(splits["validation"], "jargon-chat-validation.jsonl")["id"]
    question, reference = test[0]["messages"][1]["content"], test[0]["messages"][2]["content"]
    said = client.chat(test[0]["messages"][:2], None, temperature=0, max_tokens=24)
    out(f"base model on {question!r}: {said['choices'][0]['message']['content']!r}")
    base = exact_match(client, test, None)
    out(f"base model exact match on {len(test)} held-out phrases: {base:.3f}")

    name = adapter_name or f"jargon-chat-{uuid.uuid4().hex[:6]}"
    hyperparameters = {"rank": 8, "alpha": 16.0, "epochs": epochs, "batch_size": 16,
                       "learning_rate": learning_rate, "target_modules": TARGETS}  # fmt: skip
    job = client.create_job(name, train, validation, **hyperparameters)
    out(f"training {name!r} (job {job['id']}, SFT, all seven projections, rank 8)")
    follow_job(client, job["id"], out, lambda d: (
        f"validation_loss {d['validation_loss']:.4f}, exact match {d['validation_exact_match']:.3f}"
    ))  # fmt: skip
    said = client.chat(test[0]["messages"][:2], name, temperature=0, max_tokens=24)
    out(f"adapter on {question!r}: {said['choices'][0]['message']['content']!r} "
        f"(reference {reference!r})")  # fmt: skip
    tuned = exact_match(client, test, name)
    out(f"adapter {name!r} exact match on the same held-out phrases: {tuned:.3f}")
    return {"base_exact_match": base, "adapter_exact_match": tuned}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by `python -m app.cli.examples.chat` and `loraserve chat-demo`."""
    add_demo_arguments(parser, epochs=2, learning_rate=2e-3)


def run_from_args(client: Client, args: argparse.Namespace) -> None:
    if args.write is not None:
        args.write.mkdir(parents=True, exist_ok=True)
        for split, rows in chat_rows().items():
            path = args.write / f"jargon-chat-{split}.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
            print(f"wrote {path} ({len(rows)} chats)")
        return
    results = run_chat_demo(client, args.epochs, args.learning_rate, args.adapter_name)
    if not results["adapter_exact_match"] > results["base_exact_match"]:
        raise SystemExit("error: the adapter did no better than the base model")


def main(argv: list[str] | None = None) -> None:
    demo_main(__doc__ or "", add_arguments, run_from_args, argv)


if __name__ == "__main__":
    main()
