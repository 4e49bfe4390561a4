"""Several hosts, one cut off mid-job. Each host is a network namespace of our own (tests.faults
.NetLab: veth links to a bridge in a namespace of its own, addresses that exist only inside them):
`svc` runs our own PostgreSQL, Redis and SeaweedFS; `api` the API (this test's client is there too);
`wa` a `modelport worker` for the cpu and intel queues; `wb` one for cpu only.

A conversion runs on wa; wa is cut off (its link down at the bridge, every process on it frozen,
as a host that hangs or drops off the network). Its step is taken back once its heartbeat is
`MODELPORT_STEP_STALE_AFTER_S` old and runs on wb; a step for the intel queue, which only wa serves,
waits visibly as `waiting_for_hardware` meanwhile. When wa comes back its old attempt finds the
step taken (the claim is a compare-and-set on the step's worker) and ends without recording
anything; it runs the intel step. From the catalog rows: one completed attempt per step, every job
succeeded, no message left behind."""

from __future__ import annotations

import time
import uuid

import pytest

from tests import models
from tests.faults import NetLab, OwnPostgres, OwnRedis, OwnSeaweed, WorkerProcess, netns_unavailable, wait_for
from tests.fuzzing import serve
from tests.helpers import S3_KEY, S3_SECRET, make_settings, upload


@pytest.fixture
def lab():
    why = netns_unavailable()
    if why:
        pytest.skip(f"several hosts need network namespaces: {why}")
    lab = NetLab(["svc", "api", "wa", "wb"])
    try:
        yield lab.up()
    finally:
        lab.teardown()


def test_a_worker_host_cut_off_mid_job(lab, tmp_path):
    import httpx
    import sqlalchemy as sa

    svc = lab.addr["svc"]
    pg = OwnPostgres(host=svc, netns=lab.ns["svc"], clients=lab.network)
    redis = OwnRedis(tmp_path / "redis", host=svc, netns=lab.ns["svc"])
    weed = OwnSeaweed(tmp_path / "weed", S3_KEY, S3_SECRET, host=svc, netns=lab.ns["svc"])
    env = {"MODELPORT_DATABASE_URL": pg.url, "MODELPORT_BROKER_URL": redis.url,
           "MODELPORT_STORAGE_URL": f"s3://mp-{uuid.uuid4().hex[:10]}/objects", "MODELPORT_S3_ENDPOINT_URL": weed.url,
           "MODELPORT_S3_ACCESS_KEY_ID": S3_KEY, "MODELPORT_S3_SECRET_ACCESS_KEY": S3_SECRET,
           "MODELPORT_HEARTBEAT_S": "1", "MODELPORT_WORKER_STALE_S": "4", "MODELPORT_STEP_STALE_AFTER_S": "6"}
    wa = WorkerProcess("wa", env, tmp_path, queues="cpu,intel", netns=lab.ns["wa"])
    wb = WorkerProcess("wb", env, tmp_path, queues="cpu", netns=lab.ns["wb"])
    workers = [wa, wb]
    srv = thread = None
    t0 = time.monotonic()
    try:
        pg.start()
        redis.start()
        weed.start()
        with lab.entered("api"):
            settings = make_settings(tmp_path / "api", **{k[len("MODELPORT_"):].lower(): v for k, v in env.items()})
            _app, srv, thread, base = serve(settings)
            wa.start()
            c = httpx.Client(base_url=base, timeout=60)

            def live(source: str, target: str) -> bool:
                plan = c.get("/v1/formats/plan", params={"source": source, "target": target}).json()
                return plan["steps"][0]["worker_available"]

            pt2 = upload(c, models.exported_program(tmp_path))
            onnx = upload(c, models.onnx_model(tmp_path)[0])
            wait_for(lambda: live("onnx", "openvino"), 120, "wa to announce itself", workers)
            r = c.post(f"/v1/models/{pt2['id']}/conversions", json={"target": "onnx", "validate": False,
                                                                   "benchmark": False})
            assert r.status_code == 202, r.text
            first = wait_for(lambda: (j := c.get(f"/v1/jobs/{r.json()['id']}").json())["steps"][0]["status"]
                             == "running" and j, 120, "the conversion to run on wa", workers)
            a_id = first["steps"][0]["worker"]

            lab.cut("wa")
            lab.freeze("wa")
            cut = time.monotonic()
            wb.start()
            # the step waits visibly while wa's heartbeat ages: still `running` on wa
            assert c.get(f"/v1/jobs/{first['id']}").json()["steps"][0]["worker"] == a_id
            wait_for(lambda: not live("onnx", "openvino"), 60, "wa to count as gone", workers)
            r = c.post(f"/v1/models/{onnx['id']}/conversions", json={"target": "openvino", "validate": False,
                                                                    "benchmark": False})
            assert r.status_code == 202, r.text
            intel = r.json()
            assert intel["status"] == "waiting_for_hardware" and intel["steps"][0]["queue"] == "intel", intel
            done = wait_for(lambda: (j := c.get(f"/v1/jobs/{first['id']}").json())["status"] in
                            ("succeeded", "failed") and j, 180, "the step to run again on wb", workers)
            moved_s = time.monotonic() - cut
            assert done["status"] == "succeeded", done
            step = done["steps"][0]
            assert step["worker"] != a_id and step["attempts"] == 2, step
            assert "stopped responding; step requeued" in c.get(f"/v1/jobs/{first['id']}/logs").text
            # wa is still cut off: the intel step waits, saying why
            waiting = c.get(f"/v1/jobs/{intel['id']}").json()
            assert waiting["status"] == "waiting_for_hardware", waiting
            assert waiting["steps"][0]["status"] == "waiting_for_hardware"

            lab.mend("wa")
            lab.thaw("wa")
            back = time.monotonic()
            ran = wait_for(lambda: (j := c.get(f"/v1/jobs/{intel['id']}").json())["status"] in
                           ("succeeded", "failed") and j, 180, "the intel step to run on wa once it is back",
                           workers)
            back_s = time.monotonic() - back
            assert ran["status"] == "succeeded", ran
            assert ran["steps"][0]["worker"] == a_id  # the same worker process, thawed
            # wa's old attempt ended without recording anything (its worker says so): the step is still wb's
            assert f"step {step['id']}: lost claim" in wa.log.read_text(errors="replace"), wa.tail()
            eng = sa.create_engine(pg.url)
            try:
                with eng.connect() as db:
                    per_step = dict(db.execute(sa.text(
                        "SELECT s.id, count(a.id) FROM job_steps s LEFT JOIN artifacts a ON a.step_id = s.id "
                        "GROUP BY s.id")).all())
                    assert sorted(per_step.values()) == [1, 1], per_step  # one completed attempt per step
                    row = db.execute(sa.text("SELECT status, worker, attempts FROM job_steps WHERE id = :i"),
                                     {"i": step["id"]}).one()
                    assert tuple(row) == ("succeeded", step["worker"], 2), row
                    assert db.execute(sa.text("SELECT count(*) FROM job_steps WHERE status <> 'succeeded'")).scalar() == 0
                    assert db.execute(sa.text("SELECT count(*) FROM step_dispatches")).scalar() == 0
                    models_n = db.execute(sa.text("SELECT count(*) FROM models")).scalar()
                    assert models_n == 2
            finally:
                eng.dispose()
            print(f"\nseveral hosts: step moved to wb {moved_s:.1f} s after wa was cut off; intel step done "
                  f"{back_s:.1f} s after wa came back; {time.monotonic() - t0:.0f} s in all")
            c.close()
            srv.should_exit = True
            thread.join(30)
            srv = None
    finally:
        if srv is not None:
            srv.should_exit = True
            thread.join(30)
        for w in workers:
            w.stop()
        weed.stop()
        redis.stop()
        pg.close()
