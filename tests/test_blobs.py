"""Blob lifetime (app/blobs.py), on SQLite + local objects and on PostgreSQL + S3: a deleted model's
bytes leave the store only after the grace period and only if nothing references them again, and
an upload of the same bytes racing the sweep that deletes them ends with its bytes stored."""

from __future__ import annotations

import datetime as dt
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from app.catalog.tables import utcnow
from app.ingest import blobs
from app.storage import blob_key


def upload(client, data: bytes, name: str = "w.safetensors", **kw):
    return client.post("/v1/models", params={"filename": name}, content=data,
                       headers={"Content-Type": "application/octet-stream"}, **kw)


@pytest.fixture
def weights(tmp_path) -> bytes:
    import numpy as np
    from safetensors.numpy import save

    return save({"w": np.random.default_rng(3).standard_normal((64, 64)).astype(np.float32)})


def pending(client) -> list[str]:
    from sqlalchemy import select

    from app.catalog.tables import BlobDeletion

    with client.app.state.db.session() as s:
        return sorted(s.scalars(select(BlobDeletion.sha256)))


def test_deleted_bytes_stay_for_the_grace_period(client, weights):
    db, store = client.app.state.db, client.app.state.store
    m = upload(client, weights).json()
    key = blob_key(m["digest"])
    assert client.delete(f"/v1/models/{m['id']}").status_code == 204
    assert store.exists(key) and pending(client) == [m["digest"]]
    assert blobs.sweep(db, store, 600) == []  # asked for just now
    assert store.exists(key)
    later = utcnow() + dt.timedelta(seconds=601)
    assert blobs.sweep(db, store, 600, now=later) == [m["digest"]]
    assert not store.exists(key) and pending(client) == []


def test_uploading_the_bytes_again_cancels_their_deletion(client, weights):
    db, store = client.app.state.db, client.app.state.store
    first = upload(client, weights).json()
    assert client.delete(f"/v1/models/{first['id']}").status_code == 204
    again = upload(client, weights)
    assert again.status_code == 201 and again.json()["digest"] == first["digest"]
    assert pending(client) == []
    assert blobs.sweep(db, store, 0) == []
    r = client.get(f"/v1/models/{again.json()['id']}/download")
    assert r.status_code == 200 and r.content == weights


def test_bytes_another_model_holds_are_kept(client, weights):
    from app.catalog import repo

    db, store = client.app.state.db, client.app.state.store
    alone = upload(client, weights).json()
    with db.session() as s:  # a second model (a multi-file one, say) holding the same bytes
        other = repo.add_model(s, files=[{"path": "copy/w.safetensors", "sha256": alone["digest"],
                                          "size": len(weights)}],
                               digest="b" * 64, name="other", format="safetensors",
                               primary_file="copy/w.safetensors", size_bytes=len(weights), file_count=1).id
    assert client.delete(f"/v1/models/{alone['id']}").status_code == 204
    assert pending(client) == [alone["digest"]]  # asked for: the sweep decides, on the references it sees then
    assert blobs.sweep(db, store, 0) == [] and pending(client) == []
    r = client.get(f"/v1/models/{other}/download")
    assert r.status_code == 200 and r.content == weights


def test_a_failed_store_delete_is_retried(client, weights, monkeypatch):
    db, store = client.app.state.db, client.app.state.store
    m = upload(client, weights).json()
    client.delete(f"/v1/models/{m['id']}")
    real = type(store).delete

    def broken(self, key):
        raise OSError("store unreachable")

    monkeypatch.setattr(type(store), "delete", broken)
    before = utcnow()
    assert blobs.sweep(db, store, 0) == [] and pending(client) == [m["digest"]]
    assert blobs.sweep(db, store, 0, now=before) == []  # moved to the back of the line: asked for again just now
    monkeypatch.setattr(type(store), "delete", real)
    assert blobs.sweep(db, store, 0, budget_s=-1) == [] and pending(client) == [m["digest"]]  # out of time
    assert blobs.sweep(db, store, 0) == [m["digest"]] and not store.exists(blob_key(m["digest"]))


def _wait_until_blocked(db) -> None:
    """Until a writer waits on the sweep's lock: PostgreSQL shows the waiting backend; SQLite has one
    writer at a time, so a second connection that may not wait is refused while the sweep holds it."""
    import sqlite3

    from sqlalchemy import text

    if db.url.startswith("sqlite"):
        probe = sqlite3.connect(db.engine.url.database, timeout=0)
        try:
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                probe.execute("BEGIN IMMEDIATE")
        finally:
            probe.close()
        return
    deadline = time.monotonic() + 30
    with db.engine.connect() as conn:
        while not conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                    "AND query ILIKE 'DELETE FROM blob_deletions%'")).scalar():
            assert time.monotonic() < deadline, "no claim is waiting for the sweep's row lock"
            time.sleep(0.01)


def test_an_upload_racing_the_sweep_keeps_its_bytes(client, weights, monkeypatch):
    """The sweep has checked that nothing references the blob and is deleting it when an upload
    of the same bytes arrives. The upload must wait for the sweep, see the blob gone and store its
    own copy; without the claim it would find the blob, skip writing it, and point at nothing."""
    db, store = client.app.state.db, client.app.state.store
    m = upload(client, weights).json()
    client.delete(f"/v1/models/{m['id']}")
    deleting, go_on, claiming = threading.Event(), threading.Event(), threading.Event()
    order = []
    real, real_cancel = type(store).delete, blobs.sql.cancel_deletions

    def slow_delete(self, key):
        deleting.set()
        assert go_on.wait(30)
        real(self, key)
        order.append("deleted")

    def cancel(s, shas):
        claiming.set()
        real_cancel(s, shas)
        order.append("claimed")

    monkeypatch.setattr(type(store), "delete", slow_delete)
    monkeypatch.setattr(blobs.sql, "cancel_deletions", cancel)
    with ThreadPoolExecutor(2) as pool:
        swept = pool.submit(blobs.sweep, db, store, 0)
        assert deleting.wait(30)  # the sweep holds the deletion row now
        uploaded = pool.submit(upload, client, weights)
        assert claiming.wait(60), "the upload never claimed its blob"
        _wait_until_blocked(db)
        assert order == [] and not uploaded.done(), "the upload did not wait for the sweep in progress"
        go_on.set()
        assert swept.result(30) == [m["digest"]]
        r = uploaded.result(60)
    assert order[:2] == ["deleted", "claimed"]  # the claim returned only once the sweep had deleted
    assert r.status_code == 201, r.text
    dl = client.get(f"/v1/models/{r.json()['id']}/download")
    assert dl.status_code == 200 and dl.content == weights


def test_replaced_samples_are_released(client, tmp_path):
    import io

    import numpy as np

    from tests import models

    pt2 = models.exported_program(tmp_path)
    m = upload(client, Path(pt2).read_bytes(), name="m.pt2").json()
    shas = []
    for seed in (1, 2):
        buf = io.BytesIO()
        np.savez(buf, x=np.random.default_rng(seed).standard_normal((2, 8)).astype(np.float32))
        r = client.put(f"/v1/models/{m['id']}/samples", content=buf.getvalue())
        assert r.status_code == 200, r.text
        shas.append(r.json()["samples_sha256"])
    assert pending(client) == sorted(shas)  # the new one too: a concurrent replacement may overwrite it
    assert blobs.sweep(client.app.state.db, client.app.state.store, 0) == [shas[0]]
    assert pending(client) == []
    assert client.app.state.store.exists(blob_key(shas[1]))


def test_calibration_sets_keep_their_bytes_until_their_model_goes(client, tmp_path):
    import io

    import numpy as np

    from tests import models

    db, store = client.app.state.db, client.app.state.store
    m = upload(client, models.onnx_classifier(tmp_path).read_bytes(), name="m.onnx").json()
    buf = io.BytesIO()
    np.savez(buf, x=np.random.default_rng(4).standard_normal((6, 32)).astype(np.float32))
    r = client.post(f"/v1/models/{m['id']}/calibration-sets", content=buf.getvalue())
    assert r.status_code == 201, r.text
    sha = r.json()["sha256"]
    assert pending(client) == [] and store.exists(blob_key(sha))
    assert blobs.sweep(db, store, 0) == [] and store.exists(blob_key(sha))  # referenced: kept
    assert client.delete(f"/v1/models/{m['id']}").status_code == 204
    assert sha in pending(client)
    assert sha in blobs.sweep(db, store, 0) and not store.exists(blob_key(sha))
