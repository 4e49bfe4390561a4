"""Upload, list, get, download and delete models over HTTP, on embedded defaults and on
PostgreSQL + S3 (the `client` fixture runs each test on both)."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests import models


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path | list[Path]]:
    out = tmp_path_factory.mktemp("api-models")
    ext_dir = out / "ext"
    ext_dir.mkdir()
    return {
        "onnx": models.onnx_model(out)[0],
        "onnx_ext": models.onnx_model(ext_dir, external=True),
        "state_dict": models.state_dict(out),
        "safetensors": models.safetensors_file(out),
        "torchscript": models.torchscript(out),
    }


def upload_raw(client, path: Path, filename: str | None = None, **params):
    return client.post("/v1/models", params={"filename": filename or path.name, **params},
                       content=path.read_bytes(), headers={"Content-Type": "application/octet-stream"})


def assert_clean(client) -> None:
    """Nothing of a refused upload is left: no row, no blob, no temp file; the service is healthy."""
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert client.get("/v1/models").json()["total"] == 0
    tmp = client.settings.tmp_dir
    assert not tmp.exists() or list(tmp.iterdir()) == []
    store = client.app.state.store
    if hasattr(store, "root"):
        assert [p for p in (store.root / "blobs").rglob("*") if p.is_file()] == [] if (store.root / "blobs").exists() else True
    else:
        listed = store.client.list_objects_v2(Bucket=store.bucket, Prefix=store.prefix)
        assert listed.get("KeyCount", 0) == 0


def test_upload_get_list_download_delete(client, files):
    data = files["onnx"].read_bytes()
    r = upload_raw(client, files["onnx"], name="tiny-classifier", metadata=json.dumps({"team": "vision"}))
    assert r.status_code == 201, r.text
    m = r.json()
    assert m["format"] == "onnx" and m["name"] == "tiny-classifier" and m["metadata"] == {"team": "vision"}
    assert m["size_bytes"] == len(data) and m["file_count"] == 1
    import hashlib

    assert m["digest"] == hashlib.sha256(data).hexdigest()
    assert m["inspection"]["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 8]}]
    assert r.headers["location"] == f"/v1/models/{m['id']}"

    again = upload_raw(client, files["onnx"], filename="renamed.onnx")
    assert again.status_code == 200 and again.json()["id"] == m["id"]

    got = client.get(f"/v1/models/{m['id']}")
    assert got.status_code == 200 and got.json()["digest"] == m["digest"]
    dl = client.get(f"/v1/models/{m['id']}/download")
    assert dl.status_code == 200 and dl.content == data
    assert 'filename="tiny.onnx"' in dl.headers["content-disposition"]

    r2 = upload_raw(client, files["state_dict"])
    assert r2.status_code == 201 and r2.json()["format"] == "pytorch"
    listing = client.get("/v1/models").json()
    assert listing["total"] == 2
    assert [x["format"] for x in client.get("/v1/models", params={"format": "onnx"}).json()["items"]] == ["onnx"]
    assert client.get("/v1/models", params={"name": "classifier"}).json()["total"] == 1
    page = client.get("/v1/models", params={"limit": 1, "offset": 1}).json()
    assert page["total"] == 2 and len(page["items"]) == 1

    assert client.delete(f"/v1/models/{m['id']}").status_code == 204
    gone = client.get(f"/v1/models/{m['id']}")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"
    assert client.delete(f"/v1/models/{m['id']}").status_code == 404
    # the blob goes once its grace period is over (tests/test_blobs.py)
    from app.ingest import blobs

    assert blobs.sweep(client.app.state.db, client.app.state.store, 0) == [m["digest"]]
    assert not client.app.state.store.exists(f"blobs/sha256/{m['digest'][:2]}/{m['digest']}")


def test_multipart_multi_file_onnx_with_external_data(client, files):
    onnx_path, data_path = files["onnx_ext"]
    r = client.post("/v1/models", data={"name": "ext", "metadata": '{"a": 1}'}, files=[
        ("files", (onnx_path.name, onnx_path.read_bytes(), "application/octet-stream")),
        ("files", (data_path.name, data_path.read_bytes(), "application/octet-stream")),
    ])
    assert r.status_code == 201, r.text
    m = r.json()
    assert m["format"] == "onnx" and m["file_count"] == 2 and m["primary_file"] == "tiny.onnx"
    assert m["name"] == "ext" and m["metadata"] == {"a": 1}
    assert m["inspection"]["details"]["external_data"] == ["tiny.onnx.data"]
    dl = client.get(f"/v1/models/{m['id']}/download")
    assert dl.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(dl.content)) as z:
        assert z.read("tiny.onnx") == onnx_path.read_bytes()
        assert z.read("tiny.onnx.data") == data_path.read_bytes()
    one = client.get(f"/v1/models/{m['id']}/download", params={"file": "tiny.onnx.data"})
    assert one.content == data_path.read_bytes()


def test_external_data_missing_is_refused(client, files):
    onnx_path, _ = files["onnx_ext"]
    r = upload_raw(client, onnx_path)
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "malformed_model" and "tiny.onnx.data" in err["message"]
    assert err["detail"]["format"] == "onnx"
    assert_clean(client)


def test_directory_archive_tar_gz_and_zip(client, files):
    onnx_path, data_path = files["onnx_ext"]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(onnx_path, "bundle/tiny.onnx")
        tf.add(data_path, "bundle/tiny.onnx.data")
    r = client.post("/v1/models", params={"filename": "bundle.tar.gz"}, content=buf.getvalue(),
                    headers={"Content-Type": "application/gzip"})
    assert r.status_code == 201, r.text
    m = r.json()
    assert m["is_directory"] and m["format"] == "onnx" and m["name"] == "bundle"
    assert sorted(f["path"] for f in m["files"]) == ["bundle/tiny.onnx", "bundle/tiny.onnx.data"]
    # the same directory as a zip is the same content: deduplicated
    zbytes = models.zip_bytes({"bundle/tiny.onnx": onnx_path.read_bytes(),
                               "bundle/tiny.onnx.data": data_path.read_bytes()})
    r2 = client.post("/v1/models", files={"file": ("bundle.zip", zbytes, "application/zip")})
    assert r2.status_code == 200 and r2.json()["id"] == m["id"]
    dl = client.get(f"/v1/models/{m['id']}/download")
    with zipfile.ZipFile(io.BytesIO(dl.content)) as z:
        assert z.read("bundle/tiny.onnx.data") == data_path.read_bytes()


@pytest.mark.parametrize("key,fmt", [("state_dict", "pytorch"), ("safetensors", "safetensors"),
                                     ("torchscript", "torchscript")])
def test_formats_detected_at_upload(embedded_client, files, key, fmt):
    r = upload_raw(embedded_client, files[key])
    assert r.status_code == 201, r.text
    assert r.json()["format"] == fmt


def test_extension_mismatch_is_reported_content_wins(embedded_client, files):
    r = upload_raw(embedded_client, files["onnx"], filename="weights.safetensors")
    assert r.status_code == 201
    body = r.json()
    assert body["format"] == "onnx"
    assert body["inspection"]["extension_hint"] == "safetensors"
    assert "content wins" in body["warnings"][0]


def test_bad_uploads_each_get_their_own_code(client, files, tmp_path):
    cases = []
    cases.append(("empty", client.post("/v1/models", params={"filename": "a.onnx"}, content=b"",
                                        headers={"Content-Type": "application/octet-stream"}), 400, "empty_upload"))
    cases.append(("no filename", client.post("/v1/models", content=b"abc",
                                              headers={"Content-Type": "application/octet-stream"}),
                  400, "missing_filename"))
    cases.append(("content type", client.post("/v1/models", params={"filename": "a.onnx"}, content=b"{}",
                                               headers={"Content-Type": "application/json"}),
                  415, "unsupported_content_type"))
    cases.append(("unknown", client.post("/v1/models", params={"filename": "notes.txt"}, content=b"hello world",
                                          headers={"Content-Type": "application/octet-stream"}),
                  415, "unknown_format"))
    cases.append(("bad metadata", upload_raw(client, files["onnx"], metadata="[1,2"), 400, "bad_metadata"))
    good = models.zip_bytes({"a/saved_model.pb": b"x" * 100})
    cases.append(("corrupt zip", client.post("/v1/models", params={"filename": "m.zip"}, content=good[:60],
                                              headers={"Content-Type": "application/zip"}), 422, "corrupt_archive"))
    cases.append(("traversal", client.post("/v1/models", params={"filename": "m.zip"},
                                           content=models.zip_bytes({"../../etc/evil": b"x"}),
                                           headers={"Content-Type": "application/zip"}), 422, "path_traversal"))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("model/link")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tf.addfile(info)
    cases.append(("symlink", client.post("/v1/models", params={"filename": "m.tar"}, content=buf.getvalue(),
                                         headers={"Content-Type": "application/x-tar"}), 422, "archive_link"))
    bomb = models.zip_bytes({"m/saved_model.pb": b"\0" * (64 * 1024 * 1024)})
    cases.append(("bomb", client.post("/v1/models", params={"filename": "m.zip"}, content=bomb,
                                      headers={"Content-Type": "application/zip"}), 422, "archive_bomb"))
    cases.append(("bad filename", client.post("/v1/models", files={"file": ("../x.onnx", b"abc")}),
                  422, "path_traversal"))
    for label, r, status, code in cases:
        assert r.status_code == status, (label, r.status_code, r.text)
        body = r.json()
        assert body["error"]["code"] == code, (label, body)
        assert body["error"]["message"], label
    assert_clean(client)


def test_size_limit_is_413_and_leaves_nothing(tmp_path, files):
    from fastapi.testclient import TestClient

    from app.main import create_app
    from tests.helpers import make_settings

    settings = make_settings(tmp_path, max_upload_bytes=500)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        c.settings = settings
        big = files["onnx"]
        assert big.stat().st_size > 500
        r = upload_raw(c, big)
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
        assert r.json()["error"]["detail"]["limit_bytes"] == 500

        def chunks():  # no Content-Length: the limit is enforced while streaming
            data = big.read_bytes()
            for i in range(0, len(data), 256):
                yield data[i : i + 256]

        r = c.post("/v1/models", params={"filename": "x.onnx"}, content=chunks(),
                   headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 413
        assert_clean(c)


def test_not_found_and_validation_errors_use_one_shape(embedded_client):
    r = embedded_client.get("/v1/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = embedded_client.get("/v1/models", params={"limit": 0})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    assert "limit" in r.json()["error"]["message"]
    r = embedded_client.get("/v1/models/abc/download")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_readyz_reports_what_is_down(embedded_client):
    assert embedded_client.get("/readyz").json()["checks"] == {"catalog": "ok", "storage": "ok", "dispatch": "ok"}
    store = embedded_client.app.state.store
    import shutil

    shutil.rmtree(store.root)
    store.root.write_text("not a directory")
    r = embedded_client.get("/readyz")
    assert r.status_code == 503
    body = r.json()["error"]
    assert body["code"] == "not_ready" and "storage" in body["message"]
    assert body["detail"]["checks"]["catalog"] == "ok"


def test_openapi_served(embedded_client):
    spec = embedded_client.get("/openapi.json").json()
    assert "/v1/models" in spec["paths"] and "/v1/models/{model_id}/download" in spec["paths"]
    assert embedded_client.get("/docs").status_code == 200


def test_hostile_pickles_are_refused_over_http_and_never_run(client, tmp_path):
    marker = tmp_path / "pwned"
    r = client.post("/v1/models", params={"filename": "weights.pt"}, content=models.evil_pickle(f"touch {marker}"),
                    headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "unsafe_model"
    assert any(g.endswith(".system") for g in err["detail"]["offending_globals"])
    zipped = models.evil_torch_zip(tmp_path)
    r = client.post("/v1/models", files={"file": ("model.pth", zipped.read_bytes())})
    assert r.status_code == 422 and r.json()["error"]["code"] == "unsafe_model"
    r = client.post("/v1/models", files={"file": ("full.pt", models.full_model_pickle(tmp_path).read_bytes())})
    assert r.status_code == 422 and r.json()["error"]["code"] == "model_needs_code"
    assert "needs its code" in r.json()["error"]["message"]
    assert not marker.exists()
    assert_clean(client)


def test_truncated_multipart_is_refused(embedded_client, files):
    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"tiny.onnx\"\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n" + files["onnx"].read_bytes()[:500])
    r = embedded_client.post("/v1/models", content=body,
                             headers={"Content-Type": "multipart/form-data; boundary=XyZ"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_multipart"
    assert "closing boundary" in r.json()["error"]["message"]
    assert_clean(embedded_client)


def test_tarball_of_a_directory_root_and_file_folder_clash(embedded_client, files, tmp_path):
    """`tar -C dir .` writes a "./" member: that is the archive's root, not a traversal. A file
    and a folder of the same name in one multipart upload is a clear 400, not a 500."""
    onnx_path, data_path = files["onnx_ext"]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        root = tarfile.TarInfo(".")
        root.type = tarfile.DIRTYPE
        tf.addfile(root)
        tf.add(onnx_path, "./tiny.onnx")
        tf.add(data_path, "./tiny.onnx.data")
    r = embedded_client.post("/v1/models", params={"filename": "dir.tar.gz"}, content=buf.getvalue(),
                             headers={"Content-Type": "application/gzip"})
    assert r.status_code == 201, r.text
    assert sorted(f["path"] for f in r.json()["files"]) == ["tiny.onnx", "tiny.onnx.data"]
    r = embedded_client.post("/v1/models", files=[("files", ("a", b"x" * 10)), ("files", ("a/b", b"y" * 10))])
    assert r.status_code == 400 and r.json()["error"]["code"] == "duplicate_file"
