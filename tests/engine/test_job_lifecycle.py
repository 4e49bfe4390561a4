"""Job lifecycle logic against a real catalog (SQLite): cancellation racing a running step, the
reaper, and claims — with a recording dispatcher instead of a queue."""

from __future__ import annotations

import datetime as dt

import pytest

from app.catalog import repo
from app.catalog.db import Database, upgrade
from app.catalog.tables import Worker, utcnow
from app.pipeline import jobs
from tests.helpers import make_settings


class Recorder:
    def __init__(self):
        self.sent: list[tuple[str, str]] = []

    def enqueue(self, step_id: str, queue: str) -> None:
        self.sent.append((step_id, queue))


@pytest.fixture
def setup(tmp_path):
    settings = make_settings(tmp_path)
    db = Database(f"sqlite:///{tmp_path / 'c.db'}")
    upgrade(db.engine)
    with db.session() as s:
        m = repo.add_model(s, files=[{"path": "m.pt2", "sha256": "a" * 64, "size": 1}], digest="d" * 64, name="m",
                           format="torch_export", primary_file="m.pt2", is_directory=False, size_bytes=1,
                           file_count=1, original_filename="m.pt2", user_metadata={},
                           inspection={"format": "torch_export", "inputs": []}, warnings=[])
        model_id = m.id
    jobs.announce(db, "w1", ["cpu", "intel"], {})
    d = Recorder()
    job, created = jobs.create_job(db, d, settings, model_id, "onnx", {}, None, benchmark=False)
    assert created and d.sent == [(job.steps[0].id, "cpu")]
    return settings, db, d, job


def test_cancel_while_a_step_runs_ends_cancelled_not_stuck(setup):
    settings, db, d, job = setup
    step0 = job.steps[0].id
    with db.session() as s:
        assert repo.claim_step(s, step0, "w1", utcnow())
        assert not repo.claim_step(s, step0, "w2", utcnow())  # a redelivered message does nothing
    jobs.cancel_job(db, job.id)
    with db.session() as s:
        assert repo.get_job(s, job.id).status != "cancelled"  # its step is still running
        nxt = jobs._advance(s, settings, repo.get_step(s, step0), utcnow())  # the step finishes anyway
        assert nxt is None
    with db.session() as s:
        j = repo.get_job(s, job.id)
        assert j.status == "cancelled" and j.active_key is None
        assert [st.status for st in j.steps] == ["succeeded", "cancelled"]


def test_reaper_requeues_then_gives_up(setup):
    settings, db, d, job = setup
    step0 = job.steps[0].id
    long_ago = utcnow() - dt.timedelta(hours=1)
    for attempt in range(1, settings.max_attempts + 1):
        with db.session() as s:
            assert repo.claim_step(s, step0, f"w{attempt}", long_ago)  # claimed, then its worker died
        requeued = jobs.reap(db, d, settings)
        if attempt < settings.max_attempts:
            assert requeued == [step0] and d.sent[-1] == (step0, "cpu")
    with db.session() as s:
        j = repo.get_job(s, job.id)
        assert j.status == "failed" and "gave up after 3 attempts" in j.error["message"]
        assert j.active_key is None


def test_a_stale_step_of_a_cancelled_job_is_cancelled_by_the_reaper(setup):
    settings, db, d, job = setup
    step0 = job.steps[0].id
    with db.session() as s:
        assert repo.claim_step(s, step0, "w1", utcnow() - dt.timedelta(hours=1))
    jobs.cancel_job(db, job.id)
    assert jobs.reap(db, d, settings) == []
    with db.session() as s:
        assert repo.get_job(s, job.id).status == "cancelled"


def test_an_unclaimed_step_is_sent_again_once_per_period_and_only_where_a_worker_lives(setup):
    """The broker lost the message (restarted without persistence): the step stays queued with no
    outbox row. After MODELPORT_REDISPATCH_AFTER_S it is sent again, once per period however many
    workers sweep, never while no live worker serves its queue, never once it is claimed."""
    settings, db, d, job = setup
    step0 = job.steps[0].id
    assert jobs.redispatch_unclaimed(db, d, settings) == []  # fresh: its first message may still be queued
    old = utcnow() - dt.timedelta(seconds=settings.redispatch_after_s + 5)
    with db.session() as s:
        repo.get_step(s, step0).updated_at = old  # no one has touched it since
    with db.session() as s:
        assert repo.get_step(s, step0).updated_at.replace(tzinfo=None) == old.replace(tzinfo=None)
    assert jobs.redispatch_unclaimed(db, d, settings) == [step0]
    assert d.sent[-1] == (step0, "cpu")
    assert jobs.redispatch_unclaimed(db, d, settings) == []  # once per period
    with db.session() as s:  # two sweepers that read the step at the same time: one of them sends it
        seen = repo.get_step(s, step0).updated_at
        assert repo.touch_step(s, step0, seen, utcnow())
        assert not repo.touch_step(s, step0, seen, utcnow())
    with db.session() as s:
        step = repo.get_step(s, step0)
        assert "its message sent again" in step.log and repo.dispatch_backlog(s)[0] == 0
        step.updated_at = old
        s.get(Worker, "w1").heartbeat_at = old  # the only worker serving cpu is gone: the message would only sit there
    assert jobs.redispatch_unclaimed(db, d, settings) == []
    jobs.announce(db, "w1", ["cpu"], {})
    with db.session() as s:
        assert repo.claim_step(s, step0, "w1", utcnow())
        repo.get_step(s, step0).updated_at = old
    assert jobs.redispatch_unclaimed(db, d, settings) == []  # running: the reaper's business, not this
