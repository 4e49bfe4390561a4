"""The broker going away: a conversion requested while Redis is down is committed with its message
(the dispatch outbox) and runs once Redis is back, on a real `modelport worker`. Redis here is our
own redis-server on a free loopback port, stopped and started by the test (never the shared one)."""

from __future__ import annotations

import time

import pytest

from tests import models
from tests.faults import OwnRedis, WorkerProcess, wait_for
from tests.helpers import make_settings, upload


@pytest.fixture
def own_redis(tmp_path):
    r = OwnRedis(tmp_path / "redis")
    r.start()
    yield r
    r.stop()


def test_a_conversion_requested_while_redis_is_down_runs_when_it_is_back(tmp_path, own_redis, postgres_server_url):
    from fastapi.testclient import TestClient

    from app.catalog import repo
    from app.main import create_app
    from tests.helpers import empty_tables

    empty_tables(postgres_server_url, "jobs", "workers", "models")
    env = {"MODELPORT_DATABASE_URL": postgres_server_url, "MODELPORT_STORAGE_URL": f"file://{tmp_path / 'objects'}",
           "MODELPORT_BROKER_URL": own_redis.url, "MODELPORT_WORKER_STALE_S": "6", "MODELPORT_HEARTBEAT_S": "1"}
    settings = make_settings(tmp_path, **{k[len("MODELPORT_"):].lower(): v for k, v in env.items()})
    onnx = models.onnx_model(tmp_path)[0]
    worker = WorkerProcess("w", env, tmp_path, queues="cpu")
    # raise_server_exceptions: an exception that escaped the ASGI app would fail the test here
    with TestClient(create_app(settings), raise_server_exceptions=True) as client:
        try:
            m = upload(client, onnx)
            own_redis.stop()
            t0 = time.monotonic()
            r = client.post(f"/v1/models/{m['id']}/conversions",
                            json={"target": "onnx", "options": {"optimize": "basic"}, "validate": False,
                                  "benchmark": False})
            took = time.monotonic() - t0
            assert r.status_code == 202, r.text
            job = r.json()
            assert job["status"] in ("queued", "waiting_for_hardware") and took < 20, (job["status"], took)
            with client.app.state.db.session() as s:
                backlog, err = repo.dispatch_backlog(s)
            assert backlog == 1 and err and ("Connection" in err or "refused" in err.lower()), (backlog, err)
            ready = client.get("/readyz").json()
            assert ready["checks"]["dispatch"].startswith("1 step message waits for the broker"), ready
            # the same request while the broker is down is the same job, not a second one
            again = client.post(f"/v1/models/{m['id']}/conversions",
                                json={"target": "onnx", "options": {"optimize": "basic"}, "validate": False,
                                      "benchmark": False})
            assert again.status_code == 200 and again.json()["id"] == job["id"]

            own_redis.start()
            worker.start()
            done = wait_for(lambda: (j := client.get(f"/v1/jobs/{job['id']}").json())["status"] in
                            ("succeeded", "failed") and j, 240, "the job to end after Redis came back", [worker])
            assert done["status"] == "succeeded", done
            with client.app.state.db.session() as s:
                assert repo.dispatch_backlog(s)[0] == 0
        finally:
            worker.stop()


def test_the_relay_sends_what_the_request_could_not(tmp_path, own_redis):
    """The outbox on its own: a failed send keeps the row; the relay sends it (to our real Redis)
    once the broker answers, and the message lands on the step's queue."""
    import redis

    from app.catalog import repo
    from app.catalog.db import Database, upgrade
    from app.catalog.tables import Job, JobStep
    from app.pipeline import dispatch
    from app.pipeline.dispatch import CeleryDispatcher

    db = Database(f"sqlite:///{tmp_path / 'c.db'}")
    upgrade(db.engine)
    with db.session() as s:
        repo.ensure_project(s, "default")
        from app.catalog.tables import Model

        s.add(Model(id="m1", digest="d", name="n", format="onnx", primary_file="a", size_bytes=1, file_count=1))
        s.flush()
        job = Job(model_id="m1", target="onnx", request_key="k", status="queued", plan=["x"])
        job.steps = [JobStep(index=0, edge="x", queue="cpu", status="queued", log="")]
        s.add(job)
        s.flush()
        step_id = job.steps[0].id
        dispatch.record(s, step_id, "cpu")
    d = CeleryDispatcher(broker_url=own_redis.url)
    own_redis.stop()
    assert dispatch.send(db, d, step_id, "cpu") is False
    with db.session() as s:
        assert repo.dispatch_backlog(s)[0] == 1
    import datetime as dt

    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=60)
    assert dispatch.relay_due(db, d, now=later) == [(step_id, False)]  # still down: kept, backed off
    own_redis.start()
    sent = dispatch.relay_due(db, d, now=later + dt.timedelta(seconds=60))
    assert sent == [(step_id, True)]
    with db.session() as s:
        assert repo.dispatch_backlog(s)[0] == 0
    assert redis.Redis.from_url(own_redis.url).llen("cpu") == 1
    db.dispose()
