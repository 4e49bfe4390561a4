"""Faults with the real parts, each under a background load of uploads and predictions against a
real server on loopback: our own SeaweedFS stopped and started again, our own PostgreSQL stopped
and started again, and a full temp folder (a small tmpfs mounted over it). While a part is down
the API answers 503 naming it (507 for the full disk), never 500; inference keeps answering from
the loaded deployment; after it is back everything works again, every upload that got 201 is
intact byte for byte, and nothing half-written is left (no row without its bytes, no temp file)."""

from __future__ import annotations

import collections
import hashlib
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests import models
from tests.faults import Load, OwnPostgres, OwnRedis, OwnSeaweed, WorkerProcess, wait_for
from tests.fuzzing import serve
from tests.helpers import S3_KEY, S3_SECRET, make_settings, upload


def _deployed(base: str, tmp: Path) -> None:
    import httpx

    with httpx.Client(base_url=base, timeout=120) as c:
        m = upload(c, models.onnx_model(tmp)[0])
        r = c.post("/v1/deployments", json={"name": "tiny", "model_id": m["id"]})
        assert r.status_code == 201, r.text
        assert c.post("/v1/deployments/tiny/predict", json={"inputs": {"x": [[0.5] * 8]}}).status_code == 200


def _intact(base: str, load: Load, others: int = 1) -> int:
    """Every upload answered 201 is there, byte for byte, and no model row is there for a refused
    one (``others``: the models the test uploaded itself); returns how many were checked."""
    import httpx

    created = [e for e in load.events if e["kind"] == "upload" and e["status"] == 201]
    with httpx.Client(base_url=base, timeout=120) as c:
        for e in created:
            r = c.get(f"/v1/models/{e['id']}/download")
            assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == e["sha"], (e["id"], r.status_code)
        total = c.get("/v1/models", params={"limit": 1}).json()["total"]
    ok = {e["sha"] for e in load.events if e["kind"] == "upload" and e["status"] in (200, 201)}
    assert total == len(ok) + others, (total, len(ok))  # no row for a refused upload
    return len(created)


def _phase(load: Load, kind: str, t0: float, n: int, timeout_s: float = 120) -> list[dict]:
    wait_for(lambda: len(load.since(t0, kind)) >= n, timeout_s, f"{n} {kind}s")
    return load.since(t0, kind)


def test_the_object_store_going_away_under_load(tmp_path):
    weed = OwnSeaweed(tmp_path / "weed", S3_KEY, S3_SECRET)
    weed.start()
    settings = make_settings(tmp_path, storage_url=f"s3://mp-{uuid.uuid4().hex[:10]}/objects",
                             s3_endpoint_url=weed.url, s3_access_key_id=S3_KEY, s3_secret_access_key=S3_SECRET)
    app, srv, thread, base = serve(settings)
    load = None
    try:
        _deployed(base, tmp_path)
        load = Load(base, "tiny").start()
        t = time.monotonic()
        before = _phase(load, "upload", t, 10)
        assert all(e["status"] == 201 for e in before), [e["status"] for e in before]

        weed.stop()
        import httpx

        down = time.monotonic()
        with httpx.Client(base_url=base, timeout=60) as c:
            r = wait_for(lambda: (x := c.get("/readyz")).status_code == 503 and x, 60, "/readyz 503")
            assert "storage" in r.json()["error"]["message"], r.text
        during = _phase(load, "upload", down + 2, 6)
        statuses = {e["status"] for e in during}
        assert statuses <= {503, 201}, statuses  # 201: an upload that was already stored when it went
        assert any(e["status"] == 503 and e["code"] == "storage_unavailable" for e in during), during[:3]
        preds = _phase(load, "predict", down, 20)
        assert {e["status"] for e in preds} == {200}, {e["status"] for e in preds}  # served from memory

        weed.start()
        back = time.monotonic()
        with httpx.Client(base_url=base, timeout=60) as c:
            wait_for(lambda: c.get("/readyz").status_code == 200, 90, "/readyz 200 after the store came back")
        after = _phase(load, "upload", back + 5, 6, timeout_s=180)
        assert any(e["status"] == 201 for e in after), [e["status"] for e in after]
        load.stop()
        assert all(e["status"] is not None and e["status"] < 500 or e["status"] == 503 for e in load.events)
        assert _intact(base, load) >= 16
        assert list(settings.tmp_dir.iterdir()) == []
    finally:
        if load is not None:
            load.stop()
        srv.should_exit = True
        thread.join(30)
        weed.stop()


def test_the_catalog_going_away_under_load(tmp_path):
    pg = OwnPostgres()
    pg.start()
    settings = make_settings(tmp_path / "srv", database_url=pg.url)
    app, srv, thread, base = serve(settings)
    load = None
    try:
        _deployed(base, tmp_path)
        load = Load(base, "tiny").start()
        t = time.monotonic()
        before = _phase(load, "upload", t, 10)
        assert all(e["status"] == 201 for e in before), [e["status"] for e in before]

        pg.stop()
        import httpx

        down = time.monotonic()
        with httpx.Client(base_url=base, timeout=60) as c:
            r = wait_for(lambda: (x := c.get("/readyz")).status_code == 503 and x, 60, "/readyz 503")
            assert "catalog" in r.json()["error"]["message"], r.text
            r = c.get("/v1/models")
            assert r.status_code == 503 and r.json()["error"]["code"] == "catalog_unavailable", r.text
            assert r.headers.get("retry-after") == "5"
            # a key the server has not seen lately cannot be checked: 503 on the inference fast path too
            r = c.post("/v1/deployments/tiny/predict", json={"inputs": {"x": [[0.5] * 8]}},
                       headers={"Authorization": "Bearer mp_0badc0de_" + "x" * 43})
            assert r.status_code == 503 and r.json()["error"]["code"] == "catalog_unavailable", r.text
        during = _phase(load, "upload", down + 2, 6)
        assert {e["status"] for e in during} <= {503, 201}, {e["status"] for e in during}
        assert any(e["code"] == "catalog_unavailable" for e in during), during[:3]
        preds = _phase(load, "predict", down + 2, 20)
        assert {e["status"] for e in preds} == {200}, {e["status"] for e in preds}  # versions cached, runner loaded

        pg.start()
        back = time.monotonic()
        with httpx.Client(base_url=base, timeout=60) as c:
            wait_for(lambda: c.get("/readyz").status_code == 200, 90, "/readyz 200 after the catalog came back")
        after = _phase(load, "upload", back + 2, 6, timeout_s=180)
        assert any(e["status"] == 201 for e in after), [e["status"] for e in after]
        load.stop()
        assert all(e["status"] in (200, 201, 503) for e in load.events), {e["status"] for e in load.events}
        assert _intact(base, load) >= 16
        assert list(settings.tmp_dir.iterdir()) == []
    finally:
        if load is not None:
            load.stop()
        srv.should_exit = True
        thread.join(30)
        pg.close()


def test_a_full_temp_folder_is_507_and_leaves_nothing(tmp_path):
    """The temp folder on a 16 MiB tmpfs (mounted here; root needed): a 24 MiB upload fills it."""
    settings = make_settings(tmp_path)
    settings.tmp_dir.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(settings.tmp_dir)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (root needed): {mounted.stderr.strip()}")
    app = srv = thread = None
    load = None
    try:
        app, srv, thread, base = serve(settings)
        _deployed(base, tmp_path)
        load = Load(base, "tiny", uploaders=1).start()
        import httpx
        import numpy as np
        from safetensors.numpy import save

        big = save({"w": np.random.default_rng(0).standard_normal((6 * 1024**2,)).astype(np.float32)})
        with httpx.Client(base_url=base, timeout=120) as c:
            for _ in range(2):
                r = c.post("/v1/models", params={"filename": "big.safetensors"}, content=big,
                           headers={"Content-Type": "application/octet-stream"})
                assert r.status_code == 507 and r.json()["error"]["code"] == "disk_full", r.text[:300]
                assert "MODELPORT_DATA_DIR/tmp" in r.json()["error"]["message"]
            t = time.monotonic()
            small = _phase(load, "upload", t, 5)
            assert all(e["status"] == 201 for e in small), [e["status"] for e in small]
            load.stop()
            assert c.get("/readyz").status_code == 200
        assert _intact(base, load) >= 5
        assert list(settings.tmp_dir.iterdir()) == []
    finally:
        if load is not None:
            load.stop()
        if srv is not None:
            srv.should_exit = True
            thread.join(30)
        subprocess.run(["umount", str(settings.tmp_dir)], check=False)


def _job(c, job_id: str) -> dict:
    return c.get(f"/v1/jobs/{job_id}").json()


def _running(c, job_id: str, workers) -> dict:
    return wait_for(lambda: (j := _job(c, job_id))["steps"][0]["status"] == "running" and j, 240,
                    "the in-flight job's step to run", workers)


def _ended(c, job_id: str, workers, timeout_s: float = 240) -> dict:
    return wait_for(lambda: (j := _job(c, job_id))["status"] in ("succeeded", "failed", "cancelled") and j,
                    timeout_s, f"job {job_id} to end", workers)


def test_the_broker_then_the_catalog_restarted_with_a_job_in_flight(tmp_path):
    """Our own Redis, then our own PostgreSQL, stopped and started again while a real `modelport
    worker` runs a conversion, under uploads, conversions and predictions. Redis down: uploads 201,
    predictions 200, conversions 202 (their messages wait in the outbox, /readyz says so). Redis
    comes back empty (no persistence, as compose runs it): the messages it held are gone, and the
    workers send them again (MODELPORT_REDISPATCH_AFTER_S). PostgreSQL down: 503 naming the catalog.
    After both: every job accepted ends succeeded, the in-flight ones included, every 201 upload is
    intact byte for byte, no message waits, no step completed twice."""
    import httpx

    from app import auth

    pg, redis = OwnPostgres(), OwnRedis(tmp_path / "redis")
    env = {"MODELPORT_DATABASE_URL": pg.url, "MODELPORT_STORAGE_URL": f"file://{tmp_path / 'objects'}",
           "MODELPORT_BROKER_URL": redis.url, "MODELPORT_HEARTBEAT_S": "1", "MODELPORT_WORKER_STALE_S": "10",
           "MODELPORT_STEP_STALE_AFTER_S": "15", "MODELPORT_REDISPATCH_AFTER_S": "8"}
    settings = make_settings(tmp_path / "srv", **{k[len("MODELPORT_"):].lower(): v for k, v in env.items()})
    worker = WorkerProcess("w1", env, tmp_path, queues="cpu")
    load = srv = None
    try:
        pg.start()
        redis.start()
        app, srv, thread, base = serve(settings)
        _deployed(base, tmp_path)
        worker.start()
        c = httpx.Client(base_url=base, timeout=60)
        wait_for(lambda: c.get("/v1/formats/plan", params={"source": "torch_export", "target": "onnx"})
                 .json()["steps"][0]["worker_available"], 120, "the worker to announce itself", [worker])
        flight = []  # the jobs running when a part went away
        pt2 = upload(c, models.exported_program(tmp_path))
        load = Load(base, "tiny", converters=1, max_conversions=8, convert_every_s=2.0, workdir=tmp_path).start()

        # --- the broker
        r = c.post(f"/v1/models/{pt2['id']}/conversions", json={"target": "onnx", "benchmark": False})
        assert r.status_code == 202, r.text
        flight.append(_running(c, r.json()["id"], [worker]))
        # a conversion of the load queued behind it: its message is in Redis when Redis goes
        wait_for(lambda: any(_job(c, e["job"])["status"] == "queued" for e in load.events_of("convert")
                             if e["status"] == 202), 60, "a conversion queued behind the one running", [worker])
        redis.stop()
        down = time.monotonic()
        ready = wait_for(lambda: "waits for the broker" in (x := c.get("/readyz")).json().get("checks", {})
                         .get("dispatch", "") and x, 60, "/readyz to say step messages wait for the broker")
        assert ready.status_code == 200, ready.text  # uploads and inference go on: said, not failed
        during = _phase(load, "convert", down, 2, timeout_s=60)
        assert {e["status"] for e in during} <= {202}, during
        assert {e["status"] for e in _phase(load, "upload", down, 4)} == {201}
        assert {e["status"] for e in _phase(load, "predict", down, 20)} == {200}
        redis.start()
        back = time.monotonic()
        redis_down_s = back - down
        wait_for(lambda: c.get("/readyz").json()["checks"].get("dispatch") == "ok", 90,
                 "the outbox to drain after Redis came back", [worker])
        drained_s = time.monotonic() - back
        assert all(e["status"] == 202 for e in load.since(back, "convert")), load.since(back, "convert")

        # --- the catalog
        r = c.post(f"/v1/models/{pt2['id']}/conversions", json={"target": "onnx", "options": {"opset": 17},
                                                               "benchmark": False})
        assert r.status_code == 202, r.text
        flight.append(_running(c, r.json()["id"], [worker]))
        pg.stop()
        down = time.monotonic()
        r = wait_for(lambda: (x := c.get("/readyz")).status_code == 503 and x, 60, "/readyz 503")
        assert "catalog" in r.json()["error"]["message"], r.text
        r = c.get(f"/v1/jobs/{flight[-1]['id']}")
        assert r.status_code == 503 and r.json()["error"]["code"] == "catalog_unavailable", r.text
        refused = _phase(load, "upload", down + 2, 4)
        assert {e["status"] for e in refused} <= {503, 201}, refused
        assert any(e["code"] == "catalog_unavailable" for e in refused), refused
        # predictions go on past the time the server's answer about keys is cached (app.auth.CACHE_S)
        assert {e["status"] for e in _phase(load, "predict", down + auth.CACHE_S + 1, 20)} == {200}
        pg.start()
        back = time.monotonic()
        pg_down_s = back - down
        wait_for(lambda: c.get("/readyz").status_code == 200, 90, "/readyz 200 after the catalog came back")
        ready_s = time.monotonic() - back
        _phase(load, "upload", back + 2, 4, timeout_s=120)
        load.stop()

        # --- after: nothing stuck, nothing lost, nothing twice
        statuses = {(e["kind"], e["status"]) for e in load.events}
        assert statuses <= {("upload", 201), ("upload", 503), ("predict", 200), ("convert", 202),
                            ("convert", 503)}, statuses
        accepted = [e["job"] for e in load.events_of("convert") if e["status"] == 202]
        assert len(accepted) >= 4, load.events_of("convert")
        n_steps = 0
        for job_id in [j["id"] for j in flight] + accepted:
            job = _ended(c, job_id, [worker])
            assert job["status"] == "succeeded", job
            n_steps += len(job["steps"])
        assert c.get("/readyz").json()["checks"]["dispatch"] == "ok"
        import sqlalchemy as sa

        eng = sa.create_engine(pg.url)
        with eng.connect() as db:
            for table in ("artifacts", "validations"):  # one completed attempt per step
                twice = db.execute(sa.text(f"SELECT step_id FROM {table} GROUP BY step_id HAVING count(*) > 1"))
                assert twice.all() == [], table
            steps = db.execute(sa.text("SELECT status, count(*) FROM job_steps GROUP BY status")).all()
            assert dict(steps) == {"succeeded": n_steps}, steps
        eng.dispose()
        logs = "".join(c.get(f"/v1/jobs/{j}/logs").text for j in accepted)
        assert "its message sent again" in logs  # the messages Redis lost on its restart, sent again
        checked = _intact(base, load, others=2)  # + the deployed model and the .pt2
        assert checked >= 12
        counts = {f"{k} {v}": n for (k, v), n in sorted(collections.Counter(
            (e["kind"], e["status"]) for e in load.events).items())}
        print(f"\nbroker then catalog: Redis down {redis_down_s:.1f} s (outbox drained {drained_s:.1f} s after), "
              f"PostgreSQL down {pg_down_s:.1f} s (/readyz 200 {ready_s:.1f} s after); {counts}; "
              f"{len(flight)} in-flight + {len(accepted)} accepted jobs all succeeded; {checked} uploads intact; "
              f"steps re-sent: {sum(c.get(f'/v1/jobs/{j}/logs').text.count('its message sent again') for j in accepted)}")
        assert list(settings.tmp_dir.iterdir()) == []
    finally:
        if load is not None:
            load.stop()
        worker.stop()
        if srv is not None:
            srv.should_exit = True
            thread.join(30)
        redis.stop()
        pg.close()
