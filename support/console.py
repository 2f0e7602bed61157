"""Browser helpers for the console tests: which Chromium, its options, screenshots, tabs."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from playwright.sync_api import Page, Route, expect

from support.helpers import TINY_SIZES, adapter_files, lora_tensors, peft_config
from support.server import ROOT

SCREENSHOTS = ROOT / "build" / "screenshots"
# As root in a container Chromium needs --no-sandbox; the rest keep it off the network, which
# this machine closes (it would retry Google's hosts at every start).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    found = os.environ.get("LORASERVE_CHROMIUM") or shutil.which("chromium")
    assert found, "no Chromium: `apt-get install chromium` (or set LORASERVE_CHROMIUM)"
    return found


# Package scope, not session: Playwright's sync API holds an event loop on the main thread while
# it runs, and the tests after this package call asyncio.run().


def screenshot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def open_tab(page: Page, url: str, tab: str) -> None:
    """Open the console at `tab` and wait until its data is in."""
    page.goto(f"{url}/#{tab}")
    page.locator(f"#tabs button[data-tab={tab}][aria-current=page]").wait_for()


TARGETS = ("layer1", "layer2")


def make_adapter(seed: int, rank: int = 4) -> tuple[dict, dict, bytes, bytes]:
    config = peft_config(rank, 2 * rank, TARGETS)
    tensors = lora_tensors(TINY_SIZES, TARGETS, rank, seed)
    return config, tensors, *adapter_files(config, tensors)


def upload_dataset(page: Page, path: Path) -> str:
    page.set_input_files("#dataset-file", str(path))
    page.click("#dataset-form button[type=submit]")
    expect(page.locator("#notice")).to_contain_text("uploaded")
    listed = page.locator("#datasets-table tbody tr", has_text=path.name)
    expect(listed).to_have_count(1)
    return listed.locator("td").first.get_attribute("title") or ""


def start_job(page: Page, name: str, train: str, valid: str | None, epochs: int, batch: int):
    page.fill("#job-name", name)
    page.select_option("#job-train", train)
    page.select_option("#job-valid", valid or "")
    page.fill("#job-rank", "2")
    page.fill("#job-epochs", str(epochs))
    page.fill("#job-batch", str(batch))
    page.fill("#job-lr", "0.01")
    page.click("#job-form button[type=submit]")
    expect(page.locator("#notice")).to_contain_text(f"will write the adapter {name}")


HOSTILE = '<img src=x onerror="window.pwned=1"><script>window.pwned=1</script>'


def assert_inert(page: Page, where: str) -> None:
    assert page.evaluate("window.pwned") is None
    assert page.locator(f"{where} img, {where} script").count() == 0


def fake_json(page: Page, pattern: str, answer: dict) -> None:
    def fulfil(route: Route) -> None:
        route.fulfill(status=200, content_type="application/json", body=json.dumps(answer))

    page.route(re.compile(pattern), fulfil)
