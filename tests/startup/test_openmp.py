"""The warning for a decoder served with a no-spin chosen before the base was known."""

from __future__ import annotations

import logging

import pytest

from app.startup.openmp import MARK_VAR, SPIN_VAR, warn_if_unsuited


@pytest.mark.parametrize(
    ("decoder", "spin", "mark", "warned"),
    [
        (True, "0", "0", True),  # chosen here for another base
        (True, "0", None, False),  # the user's own 0
        (True, None, None, False),  # libgomp's default
        (False, "0", "0", False),  # the predict path wants it
    ],
)
def test_warns_only_for_a_decoder_on_our_no_spin(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    decoder: bool,
    spin: str | None,
    mark: str | None,
    warned: bool,
) -> None:
    for name, value in ((SPIN_VAR, spin), (MARK_VAR, mark)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    with caplog.at_level(logging.WARNING, logger="app.startup.openmp"):
        warn_if_unsuited(decoder)
    assert any("GOMP_SPINCOUNT=0" in r.getMessage() for r in caplog.records) is warned
