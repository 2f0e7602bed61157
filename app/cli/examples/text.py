"""The text example, end to end over HTTP: `python -m app.cli.examples.text --url http://127.0.0.1:8000`.

It needs a text base (`loraserve serve --base-model all-MiniLM-L6-v2`). A team's jargon: made-up
words for colours, things and places ("zovob zigit vupuk" is "a red chair in the garage"). The
base model has never seen the words, so it cannot find the plain sentence a jargon phrase means;
an adapter trained by the service on some phrases finds it for phrases it never saw, because it
learned the words, not the pairs. Base vs adapter recall@1 on held-out pairs, through HTTP only.
"""

from __future__ import annotations

import argparse
import json
import random
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from app.cli.base import demo_main
from app.client import Client

Print = Callable[[str], None]
Pair = tuple[str, str]

COLOURS = ("red", "blue", "green", "yellow", "black", "white", "orange", "purple")
THINGS = ("car", "dog", "house", "boat", "chair", "bird", "lamp", "book")
PLACES = ("kitchen", "garden", "garage", "park", "office", "beach")
SPLIT = {"train": 256, "validation": 64, "test": 64}  # of the 8 * 8 * 6 = 384 phrases


def jargon_pairs(seed: int = 0) -> dict[str, list[Pair]]:
    """(jargon phrase, plain sentence) pairs, split into train, validation and test.

    Every word appears in training; the test phrases are combinations training never showed.
    """
    rng = random.Random(seed)

    def made_up() -> str:  # two syllables and a closing consonant: "zovob"
        syllables = (rng.choice("bdfgklmnprstvz") + rng.choice("aeiou") for _ in range(2))
        return "".join(syllables) + rng.choice("bdfgklmnprstvz")

    lexicon: dict[str, str] = {}
    for word in COLOURS + THINGS + PLACES:
        lexicon[word] = made_up()
        while lexicon[word] in list(lexicon.values())[:-1]:
            lexicon[word] = made_up()
    phrases = [(c, t, p) for c in COLOURS for t in THINGS for p in PLACES]
    rng.shuffle(phrases)
    pairs = [
        (f"{lexicon[c]} {lexicon[t]} {lexicon[p]}", f"a {c} {t} in the {p}") for c, t, p in phrases
    ]
    out, start = {}, 0
    for split, n in SPLIT.items():
        out[split] = pairs[start : start + n]
        start += n
    return out


def write_jsonl(pairs: list[Pair], path: Path) -> None:
    lines = (json.dumps({"anchor": a, "positive": p}) for a, p in pairs)
    path.write_text("\n".join(lines) + "\n")


def recall_at_1(client: Client, pairs: list[Pair], adapter: str | None) -> float:
    """How often a jargon phrase's nearest plain sentence (of all the test sentences) is its own."""
    anchors = client.embed([a for a, _ in pairs], model=adapter)  # (N, d)
    positives = client.embed([p for _, p in pairs], model=adapter)  # (N, d)
    scores = F.normalize(anchors, dim=1) @ F.normalize(positives, dim=1).T  # (N, N)
    return (scores.argmax(dim=1) == torch.arange(len(pairs))).float().mean().item()


def run_text_demo(
    client: Client,
    epochs: int = 5,
    learning_rate: float = 3e-3,
    adapter_name: str | None = None,
    out: Print = print,
) -> dict[str, float]:
    """Train a jargon adapter through the service; returns base and adapter recall@1 on the test."""
    model = client.model()
    if model.get("family") != "hf":
        raise SystemExit(
            "error: the text demo needs a text base "
            "(loraserve serve --base-model all-MiniLM-L6-v2), not the vector model"
        )
    splits = jargon_pairs()
    out(
        f"jargon pairs: {', '.join(f'{len(v)} {k}' for k, v in splits.items())}; e.g. {splits['test'][0]}"
    )
    train = client.upload_pairs(splits["train"], "jargon-train.jsonl")["id"]
    validation = client.upload_pairs(splits["validation"], "jargon-validation.jsonl")["id"]
    base = recall_at_1(client, splits["test"], None)
    out(f"base model recall@1 on {len(splits['test'])} held-out pairs: {base:.3f}")

    name = adapter_name or f"jargon-{uuid.uuid4().hex[:6]}"
    hyperparameters = {"rank": 8, "alpha": 16.0, "epochs": epochs, "batch_size": 32,
                       "learning_rate": learning_rate}  # fmt: skip
    job = client.create_job(name, train, validation, **hyperparameters)
    out(f"training {name!r} (job {job['id']}, query and value layers, rank 8)")
    follow_job(
        client, job["id"], out, lambda d: f"validation recall@1 {d['validation_recall_at_1']:.3f}"
    )
    tuned = recall_at_1(client, splits["test"], name)
    out(f"adapter {name!r} recall@1 on the same held-out pairs: {tuned:.3f}")
    return {"base_recall_at_1": base, "adapter_recall_at_1": tuned}


def follow_job(
    client: Client, job_id: str, out: Print, validation: Callable[[dict[str, Any]], str]
) -> None:
    """Print a job's events as they come, each epoch's metrics with `validation`'s summary of
    them; exit with the job's error unless it succeeded."""
    for event in client.follow(job_id):
        data = event["data"] or {}
        if event["type"] == "metrics":
            out(f"  epoch {data['epoch']}: train_loss {data['train_loss']:.4f}, {validation(data)}")
        else:
            out(f"  {event['message']}")
    job = client.get_job(job_id)
    if job["status"] != "succeeded":
        error = job["error"] or {}
        raise SystemExit(f"error: the job {job['status']}: {error.get('message')}")


def add_demo_arguments(parser: argparse.ArgumentParser, epochs: int, learning_rate: float) -> None:
    """The options every jargon example takes, with its own defaults."""
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--learning-rate", type=float, default=learning_rate)
    parser.add_argument("--adapter-name", default=None, help="default: a new random name")
    parser.add_argument(
        "--write", type=Path, help="only write the train/validation/test JSONL files here"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by `python -m app.cli.examples.text` and `loraserve text-demo`."""
    add_demo_arguments(parser, epochs=5, learning_rate=3e-3)


def run_from_args(client: Client, args: argparse.Namespace) -> None:
    if args.write is not None:
        args.write.mkdir(parents=True, exist_ok=True)
        for split, pairs in jargon_pairs().items():
            write_jsonl(pairs, args.write / f"jargon-{split}.jsonl")
            print(f"wrote {args.write / f'jargon-{split}.jsonl'} ({len(pairs)} pairs)")
        return
    results = run_text_demo(client, args.epochs, args.learning_rate, args.adapter_name)
    if not results["adapter_recall_at_1"] > results["base_recall_at_1"]:
        raise SystemExit("error: the adapter did no better than the base model")


def main(argv: list[str] | None = None) -> None:
    demo_main(__doc__ or "", add_arguments, run_from_args, argv)


if __name__ == "__main__":
    main()
