"""The console's overview: the base model and the service's own figures, live, under traffic."""

from __future__ import annotations

import re
import threading
import time

import httpx
from playwright.sync_api import Page, expect

from support.console import make_adapter, open_tab, screenshot
from support.helpers import TINY_SIZES
from support.server import Server


def fact(page: Page, term: str):
    return page.locator("#service-facts dt", has_text=term).locator(
        "xpath=following-sibling::dd[1]"
    )


def test_the_overview_shows_the_model_and_live_figures(page: Page, server: Server) -> None:
    _, _, config, weights = make_adapter(seed=9)
    files = {"config": ("adapter_config.json", config), "weights": ("w", weights)}
    assert httpx.post(f"{server.url}/v1/adapters", data={"name": "busy"}, files=files).is_success
    listed = len(httpx.get(f"{server.url}/v1/adapters").json()["data"])

    stop = threading.Event()
    sent: list[float] = []
    statuses: list[
        int
    ] = []  # checked in the test's own thread: a failed assert in this one fails nothing

    def traffic() -> None:
        body = {"inputs": [[0.5] * TINY_SIZES[0]], "adapter": "busy"}
        with httpx.Client(base_url=server.url) as client:
            while not stop.is_set():
                statuses.append(client.post("/v1/predict", json=body).status_code)
                sent.append(time.monotonic())

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        open_tab(page, server.url, "overview")
        expect(page.locator("#model-facts")).to_contain_text(f"vectors of {TINY_SIZES[0]}")
        expect(fact(page, "Prediction latency")).to_contain_text("p50 about", timeout=15_000)
        expect(fact(page, "Prediction requests")).not_to_have_text("0.0 /s")
        shown = float(re.findall(r"[\d.]+", fact(page, "Prediction requests").inner_text())[0])
        screenshot(page, "overview-under-traffic")
    finally:
        stop.set()
        worker.join()
    assert len(statuses) > 1 and set(statuses) == {200}, sorted(set(statuses))
    rate = len(sent) / (sent[-1] - sent[0])
    assert rate / 4 < shown < rate * 4, (shown, rate)
    expect(fact(page, "Adapters registered")).to_have_text(str(listed))
    expect(fact(page, "Adapters resident")).not_to_have_text("0")
    expect(fact(page, "Adapter cache")).to_contain_text("hits")
    expect(fact(page, "Queue")).to_contain_text("rows waiting")
