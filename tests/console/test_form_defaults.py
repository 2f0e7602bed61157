"""The training form starts from the service's own defaults (read from the page's HTML, no
browser): what a person sees in a field, or is told a blank field means, is what the job gets."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

from fastapi.testclient import TestClient

from app.api.schemas import Hyperparameters
from support.training import create, dataset

PAGE = Path(__file__).resolve().parents[2] / "app" / "console" / "index.html"


class _Inputs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.inputs: dict[str, dict[str, str | None]] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "input" and found.get("id", "").startswith("job-"):  # type: ignore[union-attr]
            self.inputs[str(found["id"])] = found


def test_the_job_form_shows_the_service_defaults(client: TestClient) -> None:
    parser = _Inputs()
    parser.feed(PAGE.read_text())
    fields = parser.inputs
    defaults = Hyperparameters()
    shown = {
        "job-rank": defaults.rank,
        "job-epochs": defaults.epochs,
        "job-batch": defaults.batch_size,
        "job-lr": defaults.learning_rate,
        "job-seed": defaults.seed,
    }
    for field, value in shown.items():
        assert float(str(fields[field]["value"])) == value, field
    # A blank alpha is the rank, not PEFT's habit of 2 x rank: as the service resolves it.
    assert fields["job-alpha"]["placeholder"] == "blank: the rank"
    job = create(client, "blank-alpha", dataset(client), hyperparameters={"rank": 3})
    assert job.status_code == 201, job.text
    assert job.json()["hyperparameters"]["alpha"] == 3
