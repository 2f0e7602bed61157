"""The SQLite job store: transitions, paging, events, persistence."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.training.jobs import InvalidCursor, JobNotFound, JobStore

HP = {"rank": 1}
PROGRESS = {"epoch": 0}


def test_jobs_page_newest_first_with_an_after_cursor(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    ids = [store.create(f"a{i}", "ds", None, HP, PROGRESS).id for i in range(5)]
    page, more = store.page(None, 2)
    assert [j.id for j in page] == ids[::-1][:2] and more
    page, more = store.page(page[-1].id, 2)
    assert [j.id for j in page] == ids[::-1][2:4] and more
    page, more = store.page(page[-1].id, 2)
    assert [j.id for j in page] == [ids[0]] and not more
    with pytest.raises(InvalidCursor):
        store.page("ftjob-nope", 2)


def test_status_moves_only_from_the_named_states(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    job = store.create("a", "ds", None, HP, PROGRESS)
    assert store.set_status(job.id, "running", only_from=("queued",))
    assert not store.set_status(job.id, "running", only_from=("queued",))
    assert store.get(job.id).started_at is not None
    store.set_status(job.id, "failed", error={"code": "diverged", "message": "x"})
    failed = store.get(job.id)
    assert failed.status == "failed" and failed.error == {"code": "diverged", "message": "x"}
    assert failed.finished_at is not None


def test_events_follow_with_after(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    job = store.create("a", "ds", None, HP, PROGRESS)
    for i in range(3):
        store.add_event(job.id, "metrics", f"epoch {i}", {"epoch": i})
    events, more = store.events(job.id, None, 2)
    assert [e.message for e in events] == ["job created for adapter 'a'", "epoch 0"] and more
    events, more = store.events(job.id, events[-1].id, 10)
    assert [e.data for e in events] == [{"epoch": 1}, {"epoch": 2}] and not more
    with pytest.raises(JobNotFound):
        store.events("ftjob-nope", None, 10)


@pytest.mark.parametrize(
    "after",
    [
        "bogus",
        "event-",
        "event--1",
        "event-1.5",
        "event-9223372036854775808",  # one past SQLite's largest integer
        "event-" + "9" * 5000,  # more digits than int() reads
        "event-\u00b2",  # a digit to str.isdigit(), not to int()
        "event-\u0663",  # an Arabic-Indic 3: int() reads it, the cursor is still not ours
        "event-999",  # well formed, but no such event
    ],
)
def test_an_event_cursor_that_names_no_event_of_the_job_is_invalid(
    tmp_path: Path, after: str
) -> None:
    store = JobStore(tmp_path / "jobs.db")
    job = store.create("a", "ds", None, HP, PROGRESS)
    with pytest.raises(InvalidCursor) as caught:
        store.events(job.id, after, 10)
    assert caught.value.param == "after" and len(caught.value.message) < 200


def test_another_jobs_event_id_is_not_a_cursor(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    first, second = (store.create(n, "ds", None, HP, PROGRESS) for n in ("a", "b"))
    theirs = store.events(second.id, None, 10)[0][0].id
    with pytest.raises(InvalidCursor):
        store.events(first.id, theirs, 10)


def test_jobs_and_events_survive_reopening(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    job = store.create("a", "ds", "val", {"rank": 3}, {"epoch": 1})
    store.set_progress(job.id, {"epoch": 2})
    store.close()
    again = JobStore(tmp_path / "jobs.db")
    loaded = again.get(job.id)
    assert loaded.hyperparameters == {"rank": 3} and loaded.progress == {"epoch": 2}
    assert loaded.validation_dataset == "val"
    assert len(again.events(job.id, None, 10)[0]) == 1
