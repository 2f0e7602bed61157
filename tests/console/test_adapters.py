"""The console's adapter table and try-it panel, in a real browser against the real server."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import httpx
import torch
from playwright.sync_api import Page, expect
from safetensors.torch import load

from support.console import make_adapter, open_tab, screenshot
from support.helpers import TINY_SIZES, peft_config, reference_forward
from support.server import Server

TARGETS = ("layer1", "layer2")


def pick_and_upload(page: Page, tmp_path: Path, name: str, config: bytes, weights: bytes) -> None:
    (tmp_path / "adapter_config.json").write_bytes(config)
    (tmp_path / "adapter_model.safetensors").write_bytes(weights)
    page.fill("#upload-name", name)
    page.set_input_files("#upload-config", str(tmp_path / "adapter_config.json"))
    page.set_input_files("#upload-weights", str(tmp_path / "adapter_model.safetensors"))
    page.click("#upload-form button[type=submit]")


def same_tensors(stored: bytes, sent: bytes) -> None:
    """The store keeps the tensors sent (its file's header may differ)."""
    got, want = load(stored), load(sent)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)


def row(page: Page, name: str):
    return page.locator(f"#adapters-table tr[data-name='{name}']")


def test_upload_by_picking_then_details_download_and_delete(
    page: Page, server: Server, tmp_path: Path
) -> None:
    _, _, config, weights = make_adapter(seed=1)
    open_tab(page, server.url, "adapters")
    pick_and_upload(page, tmp_path, "picked", config, weights)
    expect(page.locator("#notice")).to_contain_text("Uploaded picked")
    expect(row(page, "picked").locator("td").nth(2)).to_have_text("4")  # rank
    expect(row(page, "picked")).to_contain_text("layer1, layer2")
    expect(row(page, "picked")).to_contain_text("upload")
    listed = httpx.get(f"{server.url}/v1/adapters/picked").json()
    expect(row(page, "picked").locator("td").nth(1)).to_have_text(listed["version"][:12])

    # The same name again is refused unless "replace" is ticked; then it is a new version.
    _, _, _, other = make_adapter(seed=11)
    pick_and_upload(page, tmp_path, "picked", config, other)
    expect(page.locator("#notice.error")).to_contain_text("409")
    page.check("#upload-overwrite")
    pick_and_upload(page, tmp_path, "picked", config, other)
    expect(page.locator("#notice")).to_contain_text("Uploaded picked")
    replaced = httpx.get(f"{server.url}/v1/adapters/picked").json()["version"]
    assert replaced != listed["version"]
    expect(row(page, "picked").locator("td").nth(1)).to_have_text(replaced[:12])
    weights = other

    row(page, "picked").get_by_role("button", name="Details").click()
    expect(page.locator(".details")).to_contain_text(f"Version {replaced}")
    versions = page.locator(".details li", has_text="serving since")
    expect(versions).to_have_count(2)
    expect(versions.first).to_contain_text(f"{replaced[:12]} (current)")
    screenshot(page, "adapters-details")

    with page.expect_download() as download:
        row(page, "picked").get_by_role("button", name="Download").click()
    saved = Path(download.value.path())
    with zipfile.ZipFile(io.BytesIO(saved.read_bytes())) as archive:
        same_tensors(archive.read("adapter_model.safetensors"), weights)
        assert json.loads(archive.read("adapter_config.json"))["r"] == 4

    # Deleting asks first; cancelling keeps the adapter.
    row(page, "picked").get_by_role("button", name="Delete").click()
    expect(page.locator("#confirm")).to_be_visible()
    expect(page.locator("#confirm-text")).to_contain_text('"picked"')
    screenshot(page, "adapters-delete-confirm")
    page.click("#confirm-cancel")
    expect(row(page, "picked")).to_be_visible()
    assert httpx.get(f"{server.url}/v1/adapters/picked").status_code == 200

    row(page, "picked").get_by_role("button", name="Delete").click()
    page.click("#confirm-ok")
    expect(page.locator("#notice")).to_contain_text("Deleted picked")
    expect(row(page, "picked")).to_have_count(0)
    assert httpx.get(f"{server.url}/v1/adapters/picked").status_code == 404


def test_upload_by_dropping_the_two_files(page: Page, server: Server) -> None:
    _, _, config, weights = make_adapter(seed=2)
    open_tab(page, server.url, "adapters")
    page.fill("#upload-name", "dropped")
    files = page.evaluate_handle(
        """([config, weights]) => {
            const dt = new DataTransfer();
            dt.items.add(new File([new Uint8Array(weights)], "adapter_model.safetensors"));
            dt.items.add(new File([new Uint8Array(config)], "adapter_config.json"));
            return dt;
        }""",
        [list(config), list(weights)],
    )
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": files})
    expect(page.locator("#notice")).to_contain_text("adapter_config.json")
    page.click("#upload-form button[type=submit]")
    expect(row(page, "dropped")).to_be_visible()
    served = httpx.get(f"{server.url}/v1/adapters/dropped/download")
    with zipfile.ZipFile(io.BytesIO(served.content)) as archive:
        same_tensors(archive.read("adapter_model.safetensors"), weights)
    screenshot(page, "adapters-dropped")


def test_a_refused_upload_shows_the_servers_reason(
    page: Page, server: Server, tmp_path: Path
) -> None:
    open_tab(page, server.url, "adapters")
    config = json.dumps(peft_config(4, 8, ["layer9"])).encode()
    _, _, _, weights = make_adapter(seed=3)
    pick_and_upload(page, tmp_path, "refused", config, weights)
    expect(page.locator("#notice.error")).to_contain_text("Upload failed")
    expect(page.locator("#notice.error")).to_contain_text("422")
    expect(row(page, "refused")).to_have_count(0)
    screenshot(page, "adapters-refused")


def displayed_rows(page: Page, card: int) -> list[list[float]]:
    table = page.locator("#try-results .result").nth(card).locator("table.outputs tr")
    return [
        [float(cell) for cell in table.nth(i).locator("td").all_inner_texts() if "..." not in cell]
        for i in range(table.count())
    ]


def test_try_it_shows_each_adapters_outputs_merged_and_unmerged(
    page: Page, server: Server, base_dir: Path
) -> None:
    """The numbers on the page are the longhand model's, for the adapter picked, in both modes."""
    config, tensors, config_bytes, weights = make_adapter(seed=4)
    r = httpx.post(
        f"{server.url}/v1/adapters",
        data={"name": "tried"},
        files={"config": ("adapter_config.json", config_bytes), "weights": ("w", weights)},
    )
    assert r.status_code == 201, r.text
    rows = torch.randn(3, TINY_SIZES[0], generator=torch.Generator().manual_seed(5))
    open_tab(page, server.url, "try")
    page.check("input[name=target][value=tried]")
    page.fill("#try-input", json.dumps(rows.tolist()))
    page.click("#try-form button[type=submit]")
    results = page.locator("#try-results .result")
    expect(results).to_have_count(4)  # base and "tried", each unmerged and merged
    titles = results.locator("h3").all_inner_texts()
    assert titles == [
        "base model, unmerged (answered unmerged)",
        "base model, merged (answered merged)",
        "tried, unmerged (answered unmerged)",
        "tried, merged (answered merged)",
    ]
    for card in range(4):
        expect(results.nth(card).locator(".timing")).to_contain_text("model")
    base = reference_forward(base_dir, rows)
    tuned = reference_forward(base_dir, rows, config, tensors)
    for card, want in enumerate([base, base, tuned, tuned]):
        # The page shows 4 significant digits: a wrong adapter is off by far more.
        assert torch.allclose(torch.tensor(displayed_rows(page, card)).double(), want, rtol=2e-3)
    assert not torch.allclose(base, tuned, rtol=1e-2)
    screenshot(page, "try-it")


def test_try_it_runs_a_composition_built_on_the_page(
    page: Page, server: Server, base_dir: Path
) -> None:
    """Two adapters picked with their scales; the numbers shown are the composition's, written
    out longhand, beside one of the adapters alone."""
    from support.helpers import reference_composition

    made = {}
    for name, seed in (("left", 6), ("right", 7)):
        config, tensors, config_bytes, weights = make_adapter(seed=seed)
        files = {"config": ("adapter_config.json", config_bytes), "weights": ("w", weights)}
        r = httpx.post(f"{server.url}/v1/adapters", data={"name": name}, files=files)
        assert r.status_code == 201, r.text
        made[name] = (config, tensors)
    rows = torch.randn(2, TINY_SIZES[0], generator=torch.Generator().manual_seed(8))
    open_tab(page, server.url, "try")
    page.uncheck("input[name=target][value='']")
    page.check("input[name=target][value=left]")
    page.uncheck("#try-modes input[value=merged]")
    for name, scale in (("left", "0.5"), ("right", "-1.25")):
        page.click("#try-compose-add")
        row = page.locator("#try-compose-rows .compose-row").last
        row.locator("select").select_option(name)
        row.locator(".compose-scale").fill(scale)
    page.fill("#try-input", json.dumps(rows.tolist()))
    page.click("#try-form button[type=submit]")
    results = page.locator("#try-results .result")
    expect(results).to_have_count(2)
    assert results.locator("h3").all_inner_texts() == [
        "left, unmerged (answered unmerged)",
        "composition left\u00d70.5 + right\u00d7-1.25, unmerged (answered unmerged)",
    ]
    want = reference_composition(base_dir, rows, [(*made["left"], 0.5), (*made["right"], -1.25)])
    assert torch.allclose(torch.tensor(displayed_rows(page, 1)).double(), want, rtol=2e-3)
    alone = reference_forward(base_dir, rows, *made["left"])
    assert not torch.allclose(want, alone, rtol=1e-2)
    screenshot(page, "try-it-composition")
