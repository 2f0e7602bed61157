"""A real browser (Debian's Chromium, driven by Playwright) against the real server on 127.0.0.1.

Chromium is not downloaded: the tests use the system's (`apt-get install chromium`; .ci/run
installs it when missing), or the one LORASERVE_CHROMIUM names. Each test saves screenshots to
build/screenshots/ for a person to look at.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from support.console import CHROMIUM_ARGS, chromium_path
from support.helpers import write_base_model
from support.server import Server, running_server


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh tab (own storage) that fails the test on any script error in the page."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    tab.set_default_timeout(15_000)
    yield tab
    context.close()
    # A 4xx the test provoked is logged by Chromium as a failed resource; anything else (a script
    # error, a 5xx, a CSP or Trusted Types refusal) is a bug.
    unexpected = [e for e in errors if "server responded with a status of 4" not in e]
    assert not unexpected, unexpected


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_base_model(tmp_path_factory.mktemp("console") / "base")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, base_dir: Path) -> Iterator[Server]:
    """The service on the tiny base, auth off, shared by a module's tests."""
    with running_server(tmp_path_factory.mktemp("console"), base_model=str(base_dir)) as running:
        yield running
