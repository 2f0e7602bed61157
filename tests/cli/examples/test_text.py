"""The text example and the text commands against the real server on all-MiniLM-L6-v2: the
jargon adapter trained through HTTP beats the base on held-out pairs; `loraserve embed` and
`loraserve train` with a JSONL file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from app.cli.examples.text import jargon_pairs, run_text_demo, write_jsonl
from app.cli.main import main
from app.client import Client
from support.server import Server, running_server

PAIR = ["A man is eating food.", "A man is eating a piece of bread."]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("text-demo")
    with running_server(tmp, ready_s=90, base_model="all-MiniLM-L6-v2") as s:
        yield s


def test_the_split_keeps_every_word_but_no_phrase_in_training() -> None:
    splits = jargon_pairs()
    assert [len(v) for v in splits.values()] == [256, 64, 64]
    seen = {tuple(p) for p in splits["train"]}
    assert not seen & {tuple(p) for p in splits["test"] + splits["validation"]}
    train_words = {w for a, _ in splits["train"] for w in a.split()}
    assert {w for a, _ in splits["test"] for w in a.split()} <= train_words
    assert jargon_pairs() == splits  # the same files on every machine


def test_a_trained_adapter_beats_the_base_on_held_out_pairs(server: Server) -> None:
    with Client(server.url) as client:
        results = run_text_demo(client, epochs=3, adapter_name="jargon", out=print)
    assert results["base_recall_at_1"] <= 0.1  # chance is 1/64
    assert results["adapter_recall_at_1"] >= 0.6


def test_embed_command_prints_the_embeddings(server: Server, monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.setenv("LORASERVE_URL", server.url)
    main(["embed", *PAIR])
    vectors = torch.tensor(json.loads(capsys.readouterr().out)["embeddings"])
    assert vectors.shape == (2, 384)
    assert float(vectors[0] @ vectors[1]) == pytest.approx(0.7553, abs=1e-3)
    (tmp_path / "texts.txt").write_text(PAIR[1] + "\n\n")
    main(
        ["embed", PAIR[0], "--file", str(tmp_path / "texts.txt"), "--out", str(tmp_path / "e.json")]
    )
    written = torch.tensor(json.loads((tmp_path / "e.json").read_text())["embeddings"])
    torch.testing.assert_close(written, vectors)
    with pytest.raises(SystemExit) as nothing:
        main(["embed"])
    assert nothing.value.code == 2 and "give texts" in capsys.readouterr().err


def test_train_command_takes_jsonl_pairs(server: Server, monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.setenv("LORASERVE_URL", server.url)
    pairs = jargon_pairs()
    write_jsonl(pairs["train"][:32], tmp_path / "train.jsonl")
    write_jsonl(pairs["validation"][:16], tmp_path / "val.jsonl")
    main(["train", "cli-jargon", "--data", str(tmp_path / "train.jsonl"), "--validation",
          str(tmp_path / "val.jsonl"), "--epochs", "1", "--batch-size", "16", "--follow"])  # fmt: skip
    out = capsys.readouterr().out
    assert '"loss": "contrastive"' in out
    assert "validation recall@1" in out and "job succeeded" in out
    with Client(server.url) as client:
        tuned = client.embed(PAIR, model="cli-jargon")
        assert (tuned - client.embed(PAIR)).abs().max() > 1e-4
        assert client.upload_pairs(tmp_path / "val.jsonl")["rows"] == 16

    (tmp_path / "bad.jsonl").write_text('{"anchor": "only one"}\n')
    with pytest.raises(SystemExit) as bad:
        main(["train", "nope", "--data", str(tmp_path / "bad.jsonl")])
    assert bad.value.code == 2 and "lacks ['positive']" in capsys.readouterr().err


def test_text_demo_write_only_writes_the_files(tmp_path: Path, capsys) -> None:
    main(["text-demo", "--write", str(tmp_path)])
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["jargon-test.jsonl", "jargon-train.jsonl", "jargon-validation.jsonl"]
    first = json.loads((tmp_path / "jargon-test.jsonl").read_text().splitlines()[0])
    assert set(first) == {"anchor", "positive"}
