"""The console with keys on: it asks for one, keeps it for the tab, shows a read-only key no
admin action, and the server still refuses what the key may not do."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from support.console import make_adapter, screenshot
from support.server import Server, running_server

ADMIN, READER = "admin-key-for-console-tests", "read-only-key-for-console-tests"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, base_dir: Path) -> Iterator[Server]:
    with running_server(
        tmp_path_factory.mktemp("keyed"), base_model=str(base_dir),
        admin_keys=ADMIN, api_keys=READER,
    ) as running:  # fmt: skip
        _, _, config, weights = make_adapter(seed=7)
        r = httpx.post(
            f"{running.url}/v1/adapters",
            headers={"Authorization": f"Bearer {ADMIN}"},
            data={"name": "shared"},
            files={"config": ("adapter_config.json", config), "weights": ("w", weights)},
        )
        assert r.status_code == 201, r.text
        yield running


def log_in(page: Page, url: str, key: str) -> None:
    page.goto(f"{url}/#adapters")
    expect(page.locator("#login")).to_be_visible()
    page.fill("#login-key", key)
    page.click("#login-form button[type=submit]")


def test_a_wrong_key_gets_a_clear_message(page: Page, keyed: Server) -> None:
    page.goto(keyed.url)
    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("#app")).to_be_hidden()
    screenshot(page, "auth-asks")
    log_in(page, keyed.url, "not-a-key")
    expect(page.locator("#login-error")).to_have_text(
        "That key was refused: the API key is not valid."
    )
    expect(page.locator("#app")).to_be_hidden()
    screenshot(page, "auth-wrong-key")


def test_a_read_only_key_sees_no_admin_action(page: Page, keyed: Server) -> None:
    log_in(page, keyed.url, READER)
    expect(page.locator("#role")).to_have_text("read-only key, project default")
    row = page.locator("#adapters-table tr[data-name='shared']")
    expect(row).to_be_visible()
    expect(row.get_by_role("button", name="Download")).to_be_visible()
    expect(row.get_by_role("button", name="Delete")).to_have_count(0)
    expect(page.locator("#upload-form")).to_be_hidden()
    screenshot(page, "auth-read-only-adapters")
    # Datasets and jobs are admin routes: no training tab, even by its address.
    expect(page.locator("#tabs button[data-tab=training]")).to_be_hidden()
    page.goto(f"{keyed.url}/#training")
    expect(page.locator("#tab-overview")).to_be_visible()
    expect(page.locator("#tab-training")).to_be_hidden()
    expect(page.locator("#service-facts")).to_contain_text("Adapters registered")
    screenshot(page, "auth-read-only-overview")
    # It may still predict.
    page.click("#tabs button[data-tab=try]")
    page.check("input[name=target][value=shared]")
    page.click("#try-random")
    page.click("#try-form button[type=submit]")
    expect(page.locator("#try-results .result")).to_have_count(4)
    # The page hides admin actions; the server refuses them all the same.
    status = page.evaluate(
        """async (key) => (await fetch("/v1/adapters/shared",
            {method: "DELETE", headers: {Authorization: `Bearer ${key}`}})).status""",
        READER,
    )
    assert status == 403
    assert (
        httpx.get(
            f"{keyed.url}/v1/adapters/shared", headers={"Authorization": f"Bearer {ADMIN}"}
        ).status_code
        == 200
    )


def test_an_admin_key_is_kept_for_the_tab_only(browser: Browser, page: Page, keyed: Server) -> None:
    log_in(page, keyed.url, ADMIN)
    expect(page.locator("#role")).to_have_text("admin key, project default")
    row = page.locator("#adapters-table tr[data-name='shared']")
    expect(row.get_by_role("button", name="Delete")).to_be_visible()
    expect(page.locator("#upload-form")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('loraserve.key')") == ADMIN
    assert page.evaluate("localStorage.length") == 0
    assert page.context.cookies() == []
    page.reload()  # the same tab keeps it
    expect(page.locator("#role")).to_have_text("admin key, project default")
    other = page.context.new_page()  # a new tab does not
    other.goto(keyed.url)
    expect(other.locator("#login")).to_be_visible()
    other.close()
    screenshot(page, "auth-admin")
    page.click("#forget-key")
    expect(page.locator("#login")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('loraserve.key')") is None
