"""Faults with the real parts, each under a background load of uploads and predictions against a
real server on loopback: our own SeaweedFS stopped and started again, our own PostgreSQL stopped
and started again, and a full temp folder (a small tmpfs mounted over it). While a part is down
the API answers 503 naming it (507 for the full disk), never 500; inference keeps answering from
the loaded deployment; after it is back everything works again, every upload that got 201 is
intact byte for byte, and nothing half-written is left (no row without its bytes, no temp file)."""

from __future__ import annotations

import hashlib
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests import models
from tests.faults import Load, OwnPostgres, OwnSeaweed, wait_for
from tests.fuzzing import serve
from tests.helpers import S3_KEY, S3_SECRET, make_settings, upload


def _deployed(base: str, tmp: Path) -> None:
    import httpx

    with httpx.Client(base_url=base, timeout=120) as c:
        m = upload(c, models.onnx_model(tmp)[0])
        r = c.post("/v1/deployments", json={"name": "tiny", "model_id": m["id"]})
        assert r.status_code == 201, r.text
        assert c.post("/v1/deployments/tiny/predict", json={"inputs": {"x": [[0.5] * 8]}}).status_code == 200


def _intact(base: str, load: Load) -> int:
    """Every upload answered 201 is there, byte for byte; returns how many were checked."""
    import httpx

    created = [e for e in load.events if e["kind"] == "upload" and e["status"] == 201]
    with httpx.Client(base_url=base, timeout=120) as c:
        for e in created:
            r = c.get(f"/v1/models/{e['id']}/download")
            assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == e["sha"], (e["id"], r.status_code)
        total = c.get("/v1/models", params={"limit": 1}).json()["total"]
    ok = {e["sha"] for e in load.events if e["kind"] == "upload" and e["status"] in (200, 201)}
    assert total == len(ok) + 1, (total, len(ok))  # + the deployed model: no row for a refused upload
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
    pg = OwnPostgres(tmp_path / "pg")
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
        pg.stop()


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
