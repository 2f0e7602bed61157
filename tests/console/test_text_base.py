"""The console on a text base (a tiny BERT with MiniLM's tokenizer): text pairs in, a contrastive
job whose recall@1 is drawn beside its losses, embeddings and their cosine similarity out."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from playwright.sync_api import Page, expect

from support.console import open_tab, screenshot, start_job, upload_dataset
from support.helpers import write_tiny_text_model
from support.server import Server, running_server
from support.training import PAIRS

TEXTS = ["code apple", "the word apple", "code tiger"]


@pytest.fixture(scope="module")
def text_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("text")
    base = write_tiny_text_model(tmp / "base")
    with running_server(tmp, base_model=str(base), ready_s=60) as running:
        yield running


def pairs_file(path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    return path


def test_train_on_text_pairs_then_compare_embeddings(
    page: Page, text_server: Server, tmp_path: Path
) -> None:
    open_tab(page, text_server.url, "training")
    expect(page.locator("#dataset-hint")).to_contain_text("Text pairs")
    pairs = upload_dataset(page, pairs_file(tmp_path / "pairs.jsonl"))
    start_job(page, "words", pairs, pairs, epochs=4, batch=8)
    expect(page.locator("#watch-status")).to_have_text("succeeded", timeout=60_000)
    expect(page.locator("#watch-chart")).to_have_attribute("data-points", "4")
    expect(page.locator(".u-legend")).to_contain_text("recall@1")
    screenshot(page, "text-training-done")

    open_tab(page, text_server.url, "try")
    expect(page.locator("#try-input-label")).to_have_text("Texts, one per line")
    page.check("input[name=target][value=words]")
    page.fill("#try-input", "\n".join(TEXTS))
    page.click("#try-form button[type=submit]")
    results = page.locator("#try-results .result")
    expect(results).to_have_count(4)
    expect(results.nth(3).locator("h3")).to_contain_text("words, merged (answered merged)")
    # The cosine table of the adapter's card is the service's own embeddings' similarity.
    answer = httpx.post(
        f"{text_server.url}/v1/embeddings", json={"model": "words", "input": TEXTS}
    ).json()
    e = np.array([d["embedding"] for d in answer["data"]])
    want = (e @ e.T) / np.outer(np.linalg.norm(e, axis=1), np.linalg.norm(e, axis=1))
    table = results.nth(2).locator("table.cosine tr")
    shown = [[float(c) for c in table.nth(i + 1).locator("td").all_inner_texts()] for i in range(3)]
    assert np.abs(np.array(shown) - want).max() <= 1e-4
    screenshot(page, "text-try-it")
