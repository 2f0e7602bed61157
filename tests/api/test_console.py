"""The console's files as the server sends them: public, strict headers, no inline script, the
vendored files unchanged, and all of it inside the package (pip install alone serves the page)."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import zipfile
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.console import CONSOLE_DIR
from app.main import create_app
from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
ASSETS = sorted(
    p.relative_to(CONSOLE_DIR).as_posix() for p in CONSOLE_DIR.rglob("*") if p.is_file()
)


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.script_text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        if self.tags and self.tags[-1][0] in ("script", "style"):
            self.script_text += data.strip()


def parsed_page() -> Tags:
    tags = Tags()
    tags.feed((CONSOLE_DIR / "index.html").read_text())
    return tags


def test_the_page_and_its_assets_carry_strict_headers(client: TestClient) -> None:
    for path in ["/", "/console/js/main.js", "/console/vendor/uPlot.iife.min.js"]:
        r = client.get(path)
        assert r.status_code == 200, path
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe" not in csp
        assert "frame-ancestors 'none'" in csp and r.headers["x-frame-options"] == "DENY"
        assert "require-trusted-types-for 'script'" in csp
        assert r.headers["x-content-type-options"] == "nosniff"
    assert client.get("/").headers["content-type"].startswith("text/html")
    assert client.get("/console/js/main.js").headers["content-type"].startswith("text/javascript")


def test_the_page_has_no_inline_script_or_style() -> None:
    page = parsed_page()
    assert page.script_text == ""
    for tag, attrs in page.tags:
        assert not [a for a in attrs if a.startswith("on") or a == "style"], (tag, attrs)
        if tag == "script":
            assert attrs["src"] and attrs["src"].startswith("/console/")
        assert tag != "style"


def test_every_file_the_page_names_is_served(client: TestClient) -> None:
    named = [
        attrs.get("src") or attrs.get("href")
        for tag, attrs in parsed_page().tags
        if tag in ("script", "link")
    ]
    imports = [
        f"/console/js/{m}"
        for js in (CONSOLE_DIR / "js").glob("*.js")
        for m in re.findall(r'from "\./([\w.]+)"', js.read_text())
    ]
    for path in [*named, *imports]:
        assert path and client.get(path).status_code == 200, path


def test_the_scripts_never_write_html() -> None:
    for js in (CONSOLE_DIR / "js").glob("*.js"):
        source = js.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in source, (js.name, sink)


def test_the_vendored_files_are_the_published_ones() -> None:
    """Byte for byte what the npm registry publishes, as vendor/README.md records."""
    table = (CONSOLE_DIR / "vendor" / "README.md").read_text()
    recorded = dict(re.findall(r"\| `([^`]+)` \|[^\n]*\| `([0-9a-f]{64})` \|", table))
    vendored = {p.name for p in (CONSOLE_DIR / "vendor").iterdir()} - {"README.md"}
    assert set(recorded) | {"uPlot.LICENSE"} == vendored
    for name, digest in recorded.items():
        assert hashlib.sha256((CONSOLE_DIR / "vendor" / name).read_bytes()).hexdigest() == digest


def test_the_console_is_public_and_the_api_is_not(settings: Settings) -> None:
    keyed = type(settings)(**{**settings.model_dump(), "admin_keys": "adm", "api_keys": "rd"})
    with TestClient(create_app(keyed)) as client:
        assert client.get("/").status_code == 200
        assert client.get("/console/console.css").status_code == 200
        # Public paths reach only the console's folder (httpx would resolve a plain `..`).
        for escape in ("/console/%2e%2e/api/console.py", "/console/..%2f..%2fapp/main.py"):
            assert client.get(escape).status_code == 404, escape
        missing = client.get("/console/nothing.js")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        assert client.get("/v1/me").status_code == 401
        me = client.get("/v1/me", headers={"Authorization": "Bearer rd"}).json()
        assert me == {"role": "api", "project": "default", "auth_enabled": True}
        me = client.get("/v1/me", headers={"Authorization": "Bearer adm"}).json()
        assert me["role"] == "admin"
        # Only the page and its files are public: a look-alike path is not.
        assert client.get("/consolex").status_code == 401
        assert client.get("/metrics").status_code == 401


def test_without_keys_everyone_may_do_everything(client: TestClient) -> None:
    me = client.get("/v1/me").json()
    assert me == {"role": "super", "project": "default", "auth_enabled": False}


def test_the_console_is_not_in_the_api_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "/" not in paths and not [p for p in paths if p.startswith("/console")]
    assert "/v1/me" in paths


@pytest.mark.parametrize("asset", ASSETS)
def test_a_wheel_carries_every_console_file(asset: str, wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        assert f"app/console/{asset}" in archive.namelist()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(ROOT)],
        check=True, capture_output=True,
    )  # fmt: skip
    (built,) = out.glob("*.whl")
    return built
