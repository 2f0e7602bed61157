"""Browser helpers for the console tests: which Chromium, its options, screenshots, tabs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from playwright.sync_api import Page

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
