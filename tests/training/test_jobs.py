"""The SQLite job store: transitions, paging, events, persistence."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.training.jobs import JobNotFound, JobStore

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
    with pytest.raises(JobNotFound):
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
        store.events(job.id, "bogus", 10)


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
