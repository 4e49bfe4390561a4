"""Both object stores: content-addressed, atomic writes, streamed reads, presigned URLs on S3."""

from __future__ import annotations

import hashlib
import os
import urllib.request
import uuid

import pytest

from app.storage import blob_key, open_store
from app.storage.local import LocalStore
from tests.helpers import S3_KEY, S3_SECRET, make_settings


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "objects")
    endpoint = request.getfixturevalue("seaweedfs")
    settings = make_settings(tmp_path, s3_endpoint_url=endpoint, s3_access_key_id=S3_KEY,
                             s3_secret_access_key=S3_SECRET)
    return open_store(f"s3://mp-{uuid.uuid4().hex[:10]}/prefix", settings)


def test_put_read_delete_roundtrip(store, tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 17)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    key = blob_key(hashlib.sha256(data).hexdigest())
    assert not store.exists(key)
    store.put_file(key, src)
    assert src.exists()  # copy, not move
    assert store.exists(key) and store.size(key) == len(data)
    chunks = list(store.iter_chunks(key, chunk_size=1024 * 1024))
    assert len(chunks) >= 3 and b"".join(chunks) == data
    out = tmp_path / "out.bin"
    store.get_to_path(key, out)
    assert out.read_bytes() == data
    store.put_file(key, src, move=True)  # existing key: kept, source consumed
    assert not src.exists() and store.size(key) == len(data)
    store.delete(key)
    assert not store.exists(key)
    store.ping()


def test_local_writes_are_atomic(tmp_path, monkeypatch):
    store = LocalStore(tmp_path / "objects")
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 5_000_000)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("shutil.copyfileobj", boom)
    with pytest.raises(OSError):
        store.put_file("blobs/sha256/ab/abc", src)
    assert not store.exists("blobs/sha256/ab/abc")
    assert list((store.root / ".tmp").iterdir()) == []


def test_local_rejects_keys_outside_root(tmp_path):
    store = LocalStore(tmp_path / "objects")
    with pytest.raises(ValueError, match="escapes"):
        store.exists("../../etc/passwd")


def test_s3_presigned_url_serves_the_bytes(tmp_path, seaweedfs):
    settings = make_settings(tmp_path, s3_endpoint_url=seaweedfs, s3_access_key_id=S3_KEY,
                             s3_secret_access_key=S3_SECRET)
    store = open_store(f"s3://mp-{uuid.uuid4().hex[:10]}", settings)
    src = tmp_path / "a.bin"
    src.write_bytes(b"presigned bytes")
    store.put_file("blobs/x", src)
    url = store.presigned_url("blobs/x", filename="a.bin")
    assert "X-Amz-Signature" in url
    with urllib.request.urlopen(url) as r:
        assert r.read() == b"presigned bytes"
    assert LocalStore(tmp_path / "o").presigned_url("blobs/x") is None
