"""Names and messages from the server are text, never HTML: a hostile adapter name, dataset file
name or job message cannot run script in the console."""

from __future__ import annotations

import torch
from playwright.sync_api import Browser, Page, expect
from safetensors.torch import save

from support.console import HOSTILE, assert_inert, fake_json, open_tab, screenshot
from support.helpers import TINY_SIZES
from support.server import Server

# Each would set window.pwned if it ever reached the page as markup.
# Without quotes: browsers escape `"` in a multipart file name (as %22).
HOSTILE_FILE = "<img src=x onerror=window.pwned=1>.safetensors"


def adapter(name: str, broken: bool) -> dict:
    return {
        "name": name, "version": "ab" * 32, "status": "broken" if broken else "ready",
        "error": {"code": "invalid_adapter", "message": HOSTILE} if broken else None,
        "rank": 4, "alpha": 8.0, "scaling": 2.0, "use_rslora": False,
        "target_modules": [HOSTILE], "rank_pattern": {}, "alpha_pattern": {}, "layers": [],
        "size_bytes": 10, "sha256": "cd" * 32, "created_at": 0, "source": "upload",
        "residency": "disk", "merged": False,
    }  # fmt: skip


def test_a_hostile_adapter_name_is_shown_as_text(page: Page, server: Server) -> None:
    """As if the server's records held markup (they cannot: names are checked on the way in)."""
    listed = [adapter(HOSTILE, broken=False), adapter(f"{HOSTILE}-broken", broken=True)]
    fake_json(page, r"/v1/adapters$", {"object": "list", "data": listed})
    fake_json(page, r"/v1/adapters/[^/]+/versions$", {"object": "list", "data": []})
    open_tab(page, server.url, "adapters")
    names = page.locator("#adapters-table td.name")
    expect(names).to_have_text([HOSTILE, f"{HOSTILE}-broken"])
    page.get_by_role("button", name="Details").nth(1).click()
    expect(page.locator(".details")).to_contain_text(f"Broken: {HOSTILE}")
    page.get_by_role("button", name="Delete").first.click()
    expect(page.locator("#confirm-text")).to_contain_text(HOSTILE)
    screenshot(page, "hostile-adapter-name")
    page.click("#confirm-cancel")
    assert_inert(page, "body")
    page.click("#tabs button[data-tab=try]")
    expect(page.locator("#try-targets")).to_contain_text(HOSTILE)
    assert_inert(page, "body")


def test_a_hostile_job_message_is_shown_as_text(page: Page, server: Server) -> None:
    progress = {"epoch": 1, "epochs": 2, "step": 1, "total_steps": 2, "train_loss": 1.0,
                "validation_loss": None, "validation_recall_at_1": None}  # fmt: skip
    hp = {"rank": 1, "alpha": 2.0, "target_modules": ["layer1"], "epochs": 2, "batch_size": 1,
          "learning_rate": 0.1, "use_rslora": False, "loss": "mse", "seed": 0}  # fmt: skip
    job = {
        "id": "ftjob-hostile", "object": "fine_tuning.job", "status": "failed",
        "adapter_name": HOSTILE, "training_dataset": "ds-1", "validation_dataset": None,
        "created_at": 0, "started_at": 0, "finished_at": 0, "hyperparameters": hp,
        "progress": progress, "error": {"code": "training_failed", "message": HOSTILE},
    }  # fmt: skip
    event = {"id": "ev-1", "object": "fine_tuning.job.event", "created_at": 0, "level": HOSTILE,
             "type": "message", "message": HOSTILE, "data": None}  # fmt: skip
    fake_json(page, r"/v1/fine-tuning/jobs\?", {"object": "list", "data": [job], "has_more": False})
    fake_json(page, r"/v1/fine-tuning/jobs/ftjob-hostile$", job)
    fake_json(page, r"/events\?", {"object": "list", "data": [event], "has_more": False})
    open_tab(page, server.url, "training")
    page.locator("#jobs-table tr", has_text="ftjob-hostile").get_by_role(
        "button", name="Watch"
    ).click()
    expect(page.locator("#watch-events")).to_contain_text(HOSTILE)
    expect(page.locator("#watch-result")).to_have_text(f"training_failed: {HOSTILE}")
    expect(page.locator("#jobs-table")).to_contain_text(HOSTILE)
    assert_inert(page, "body")
    screenshot(page, "hostile-job-message")


def test_real_hostile_inputs_come_back_as_text(page: Page, server: Server) -> None:
    """Through the real server: a dataset named like markup, and a job for a name like markup
    (refused, and its refusal shown)."""
    x = torch.randn(8, TINY_SIZES[0])
    data = save({"inputs": x, "targets": torch.randn(8, TINY_SIZES[-1])})
    open_tab(page, server.url, "training")
    page.set_input_files(
        "#dataset-file",
        files=[{"name": HOSTILE_FILE, "mimeType": "application/octet-stream", "buffer": data}],
    )
    page.click("#dataset-form button[type=submit]")
    expect(page.locator("#datasets-table")).to_contain_text(HOSTILE_FILE)
    expect(page.locator("#job-train option", has_text=HOSTILE_FILE)).to_have_count(1)
    dataset = page.locator("#job-train").input_value()
    start_job_refused(page, HOSTILE, dataset)
    expect(page.locator("#notice.error")).to_contain_text("The job was not started")
    assert_inert(page, "body")
    screenshot(page, "hostile-real-inputs")


def start_job_refused(page: Page, name: str, dataset: str) -> None:
    page.fill("#job-name", name)
    page.select_option("#job-train", dataset)
    page.click("#job-form button[type=submit]")


def test_the_page_cannot_make_html_or_script_from_a_string(
    browser: Browser, server: Server
) -> None:
    """The console's CSP turns Trusted Types on: even a bug that assigned innerHTML, or pointed
    a script at a string, would throw. (Its own tab: the refusals are logged as errors.)"""
    context = browser.new_context()
    page = context.new_page()
    page.goto(server.url)
    page.locator("#tabs").wait_for()
    refusals = page.evaluate(
        """() => [
            () => { document.body.innerHTML = "<img src=x onerror=window.pwned=1>"; },
            () => { document.createElement("script").src = "data:text/javascript,window.pwned=1"; },
            () => { document.body.insertAdjacentHTML("beforeend", "<b>x</b>"); },
        ].map((attempt) => { try { attempt(); return null; } catch (e) { return e.name; } })"""
    )
    assert refusals == ["TypeError", "TypeError", "TypeError"]
    assert page.evaluate("window.pwned") is None
    screenshot(page, "hostile-trusted-types")
    context.close()
