"""The job store on SQLite and PostgreSQL: transitions, paging, events, leases."""

from __future__ import annotations

import threading
import time

import pytest

from app.state import Database
from app.training.jobs import InvalidCursor, JobNotFound, JobStore

HP = {"rank": 1}
PROGRESS = {"epoch": 0}


@pytest.fixture
def db(database_url: str) -> Database:
    db = Database(database_url)
    db.migrate()
    yield db
    db.close()


def test_jobs_page_newest_first_with_an_after_cursor(db: Database) -> None:
    store = JobStore(db)
    ids = [store.create(f"a{i}", "ds", None, HP, PROGRESS).id for i in range(5)]
    page, more = store.page(None, 2)
    assert [j.id for j in page] == ids[::-1][:2] and more
    page, more = store.page(page[-1].id, 2)
    assert [j.id for j in page] == ids[::-1][2:4] and more
    page, more = store.page(page[-1].id, 2)
    assert [j.id for j in page] == [ids[0]] and not more
    with pytest.raises(InvalidCursor):
        store.page("ftjob-nope", 2)


def test_status_moves_only_from_the_named_states(db: Database) -> None:
    store = JobStore(db)
    job = store.create("a", "ds", None, HP, PROGRESS)
    assert store.set_status(job.id, "running", only_from=("queued",))
    assert not store.set_status(job.id, "running", only_from=("queued",))
    assert store.get(job.id).started_at is not None
    store.set_status(job.id, "failed", error={"code": "diverged", "message": "x"})
    failed = store.get(job.id)
    assert failed.status == "failed" and failed.error == {"code": "diverged", "message": "x"}
    assert failed.finished_at is not None


def test_events_follow_with_after(db: Database) -> None:
    store = JobStore(db)
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
    db: Database, after: str
) -> None:
    store = JobStore(db)
    job = store.create("a", "ds", None, HP, PROGRESS)
    with pytest.raises(InvalidCursor) as caught:
        store.events(job.id, after, 10)
    assert caught.value.param == "after" and len(caught.value.message) < 200


def test_another_jobs_event_id_is_not_a_cursor(db: Database) -> None:
    store = JobStore(db)
    first, second = (store.create(n, "ds", None, HP, PROGRESS) for n in ("a", "b"))
    theirs = store.events(second.id, None, 10)[0][0].id
    with pytest.raises(InvalidCursor):
        store.events(first.id, theirs, 10)


def test_jobs_and_events_are_seen_by_another_process_s_store(db: Database) -> None:
    store = JobStore(db)
    job = store.create("a", "ds", "val", {"rank": 3}, {"epoch": 1})
    store.set_progress(job.id, {"epoch": 2})
    again = JobStore(Database(db.url))
    loaded = again.get(job.id)
    assert loaded.hyperparameters == {"rank": 3} and loaded.progress == {"epoch": 2}
    assert loaded.validation_dataset == "val"
    assert len(again.events(job.id, None, 10)[0]) == 1


def test_each_queued_job_is_claimed_by_exactly_one_of_many_workers(db: Database) -> None:
    store = JobStore(db)
    ids = {store.create(f"a{i}", "ds", None, HP, PROGRESS).id for i in range(20)}
    claimed: list[tuple[str, str]] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        mine = JobStore(Database(db.url))  # each on its own engine, as a process would be
        while (job := mine.claim(name, 60_000)) is not None:
            with lock:
                claimed.append((job.id, name))
        mine.db.close()

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(j for j, _ in claimed) == sorted(ids)
    for job_id, name in claimed:
        job = store.get(job_id)
        assert job.status == "running" and job.worker_id == name and job.started_at


def test_renewing_tells_the_worker_of_a_cancel_and_of_a_lost_lease(db: Database) -> None:
    store = JobStore(db)
    store.create("a", "ds", None, HP, PROGRESS)
    job = store.claim("w1", 60_000)
    assert job is not None
    assert store.renew(job.id, "w1", 60_000) == "running"
    assert store.renew(job.id, "w2", 60_000) is None  # not w2's
    store.set_status(job.id, "cancelling", only_from=("running",))
    assert store.renew(job.id, "w1", 60_000) == "cancelling"


def test_a_lapsed_lease_ends_the_job_and_a_held_one_is_left_alone(db: Database) -> None:
    store = JobStore(db)
    for name in ("dead", "dying", "alive"):
        store.create(name, "ds", None, HP, PROGRESS)
    dead = store.claim("w-dead", 1)
    dying = store.claim("w-dying", 1)
    alive = store.claim("w-alive", 60_000)
    assert dead and dying and alive
    store.set_status(dying.id, "cancelling", only_from=("running",))
    time.sleep(0.01)
    assert sorted(store.reap()) == sorted([dead.id, dying.id])
    assert store.get(dead.id).status == "failed"
    assert store.get(dead.id).error == {
        "code": "interrupted",
        "message": "the worker stopped during training",
    }
    assert store.get(dying.id).status == "cancelled"
    assert store.get(alive.id).status == "running"
    assert store.reap() == []
    assert store.renew(dead.id, "w-dead", 60_000) is None  # too late to come back


def test_another_projects_job_is_not_found(db: Database) -> None:
    store = JobStore(db)
    job = store.create("a", "ds", None, HP, PROGRESS)
    with pytest.raises(JobNotFound):
        store.get(job.id, "someone-else")
    assert store.page(None, 10, "someone-else") == ([], False)
