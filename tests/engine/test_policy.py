"""The one `auto` rule (app.engine.policy), and that each engine path really follows it."""

from __future__ import annotations

import pytest

from app.engine.policy import runs_merged


@pytest.mark.parametrize(
    ("modes", "adapters", "base_rows", "merged", "pays", "expected"),
    [
        ({"auto"}, 1, False, True, False, True),  # the copy exists
        ({"auto"}, 1, False, False, True, True),  # the work pays for making it
        ({"auto"}, 1, False, False, False, False),  # neither
        ({"auto"}, 2, False, True, True, False),  # two adapters: never one copy
        ({"auto"}, 1, True, True, True, False),  # base rows beside it
        ({"auto"}, 0, True, False, True, False),  # the base alone
        ({"merged"}, 1, False, False, False, True),  # asked for
        ({"auto", "merged"}, 1, False, False, False, True),
        ({"auto", "unmerged"}, 1, False, True, True, False),  # one request said no
        ({"merged", "unmerged"}, 1, False, True, True, False),
    ],
)
def test_the_rule(modes, adapters, base_rows, merged, pays, expected) -> None:
    assert runs_merged(modes, adapters, base_rows, merged, pays) is expected
