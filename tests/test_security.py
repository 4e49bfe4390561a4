"""Security checks as tests: API keys are never logged nor returned after they are made, compared in
constant time, and never taken from a URL; every route of the app (not only the documented ones)
asks for a key; inference and uploads are bounded in size and, when configured, in rate; and no
name-like parameter reaches outside the data directory. (Cross-project access on every route is
tests/test_auth.py::test_another_projects_objects_do_not_exist.)"""

from __future__ import annotations

import ast
import io
import logging
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests import models

ROOT = Path(__file__).resolve().parents[1]


def _client(tmp_path, **overrides):
    from fastapi.testclient import TestClient

    from app.main import create_app
    from tests.helpers import make_settings

    settings = make_settings(tmp_path / "srv", **overrides)
    c = TestClient(create_app(settings), raise_server_exceptions=False)
    c.settings = settings
    return c


def bearer(k: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {k}"}


@pytest.fixture
def keyed(tmp_path):
    """An app whose project A has an admin key, a model and a deployment."""
    from app import auth

    with _client(tmp_path) as c:
        _, admin = auth.create_key(c.app.state.db, c.settings, project="A", scope="admin", name="root")
        onnx = models.onnx_model(tmp_path)[0]
        r = c.post("/v1/models", params={"filename": onnx.name}, content=onnx.read_bytes(),
                   headers={**bearer(admin), "Content-Type": "application/octet-stream"})
        assert r.status_code == 201, r.text
        m = r.json()
        assert c.post("/v1/deployments", json={"name": "tiny", "model_id": m["id"]}, headers=bearer(admin)).status_code == 201
        yield c, admin, m


def test_keys_are_never_logged_nor_returned_after_they_are_made(keyed, caplog):
    c, admin, m = keyed
    caplog.set_level(logging.DEBUG)
    r = c.post("/v1/keys", json={"name": "ci", "scope": "write"}, headers=bearer(admin))
    assert r.status_code == 201
    token = r.json()["key"]
    secret = token.split("_", 2)[2]
    bodies = []
    for url in ("/v1/keys", "/v1/models", f"/v1/models/{m['id']}", "/v1/deployments", "/v1/deployments/tiny",
                "/v1/jobs", "/v2/models/tiny", "/metrics", "/readyz"):
        bodies.append(c.get(url, headers=bearer(admin)).text)
        bodies.append(c.get(url, headers=bearer(token)).text)
    # keys that fail, each way: the answer names the problem, never the key
    for bad in (token[:-1] + ("0" if token[-1] != "0" else "1"), token + "x", "mp_" + secret, secret):
        for headers in (bearer(bad), {"X-API-Key": bad}):
            r = c.get("/v1/models", headers=headers)
            assert r.status_code == 401, r.text
            bodies.append(r.text)
    r = c.post("/v1/deployments/tiny/predict", json={"inputs": {"x": [[0.0] * 8]}}, headers=bearer(token))
    assert r.status_code == 200
    logged = "\n".join(f"{rec.getMessage()} {rec.args!r} {getattr(rec, 'exc_text', '') or ''}" for rec in caplog.records)
    assert caplog.records, "nothing was logged: the check would see nothing"
    assert secret not in logged and secret not in "".join(bodies)
    assert secret[:12] not in "".join(bodies) + logged


def test_keys_are_compared_in_constant_time():
    """app/auth.py compares the stored HMAC with hmac.compare_digest and nowhere with == or !=."""
    tree = ast.parse((ROOT / "app" / "auth.py").read_text())
    digests = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
               and n.func.attr == "compare_digest"]
    assert digests, "no hmac.compare_digest in app/auth.py"

    def names(node) -> set[str]:
        return {x.attr if isinstance(x, ast.Attribute) else x.id for x in ast.walk(node)
                if isinstance(x, ast.Attribute | ast.Name)}

    plain = [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.Compare)
             and any(isinstance(op, ast.Eq | ast.NotEq) for op in n.ops)
             and any(("hash" in x or "secret" in x) for x in names(n))]
    assert plain == [], plain


def test_no_key_is_taken_from_a_url(keyed):
    c, admin, _ = keyed
    for param in ("api_key", "key", "token", "access_token", "apikey"):
        r = c.get("/v1/models", params={param: admin})
        assert r.status_code == 401, (param, r.text)
        r = c.post("/v1/deployments/tiny/predict", params={param: admin}, json={"inputs": {"x": [[0.0] * 8]}})
        assert r.status_code == 401, (param, r.text)
    spec = c.get("/openapi.json").json()
    for path, ops in spec["paths"].items():
        for op in ops.values():
            for p in op.get("parameters", []):
                assert not any(w in p["name"].lower() for w in ("key", "token", "secret")) or p["in"] == "path", \
                    (path, p["name"])


def test_every_route_of_the_app_asks_for_a_key(keyed):
    """Walked from the app's routes (what include_in_schema hides too), not from the OpenAPI."""
    from fastapi.routing import APIRoute

    from app.api.deps import authenticated

    c, _, _ = keyed
    public = {"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready",
              "/", "/ui", "/ui/models/{model_id}"}  # the web UI's page shells: no data, the page asks /v1 with a key

    def deps(dependant):
        for d in dependant.dependencies:
            yield d.call
            yield from deps(d)

    def walk(routes, outer=(), prefix=""):
        """(path, method, dependencies) of every route, through included routers (their own dependencies too)."""
        for r in routes:
            if hasattr(r, "original_router"):  # FastAPI's included router
                ctx = r.include_context
                yield from walk(r.original_router.routes, outer + tuple(d.dependency for d in ctx.dependencies),
                                prefix + ctx.prefix)
            elif isinstance(r, APIRoute):
                yield prefix + r.path, sorted(r.methods)[0], set(outer) | set(deps(r.dependant))

    seen = 0
    for path, method, calls in walk(c.app.routes):
        seen += 1
        assert (authenticated in calls) != (path in public), path
        if path not in public:
            r = c.request(method, path.replace("{", "").replace("}", ""))
            assert r.status_code == 401, (method, path, r.status_code)
    assert seen >= 40


def test_inference_and_uploads_are_bounded_in_size(tmp_path):
    with _client(tmp_path, serving_max_body_bytes=4096, max_upload_bytes=2048) as c:
        onnx = models.onnx_model(tmp_path)[0]
        small = onnx.read_bytes()
        assert len(small) < 2048
        m = c.post("/v1/models", params={"filename": "m.onnx"}, content=small,
                   headers={"Content-Type": "application/octet-stream"}).json()
        assert c.post("/v1/deployments", json={"name": "tiny", "model_id": m["id"]}).status_code == 201
        r = c.post("/v1/models", params={"filename": "big.onnx"}, content=small * 3,
                   headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    import httpx

    from app.main import create_asgi
    from tests.fuzzing import serve
    from tests.helpers import make_settings

    settings = make_settings(tmp_path / "srv", serving_max_body_bytes=4096)  # the fast path, as served
    app, srv, thread, base = serve(settings)
    try:
        x = np.zeros((200, 8), np.float32)
        with httpx.Client(base_url=base, timeout=30) as h:
            r = h.post("/v1/deployments/tiny/predict", json={"inputs": {"x": x.tolist()}})
            assert r.status_code == 413 and "MODELPORT_SERVING_MAX_BODY_BYTES" in r.text
            body = {"inputs": [{"name": "x", "shape": [200, 8], "datatype": "FP32", "data": x.ravel().tolist()}]}
            r = h.post("/v2/models/tiny/infer", json=body)
            assert r.status_code == 413 and isinstance(r.json()["error"], str)
            assert h.post("/v1/deployments/tiny/predict", json={"inputs": {"x": x[:2].tolist()}}).status_code == 200
    finally:
        srv.should_exit = True
        thread.join(20)
    _ = create_asgi


def test_inference_and_uploads_are_rate_limited_per_client_when_configured(tmp_path):
    from app import auth

    with _client(tmp_path, rate_limit_inference_per_second=5, rate_limit_uploads_per_minute=2) as c:
        onnx = models.onnx_model(tmp_path)[0]
        _, a = auth.create_key(c.app.state.db, c.settings, project="default", scope="write", name="a")
        _, b = auth.create_key(c.app.state.db, c.settings, project="default", scope="write", name="b")
        up = lambda k, name: c.post("/v1/models", params={"filename": name}, content=onnx.read_bytes(),  # noqa: E731
                                    headers={**bearer(k), "Content-Type": "application/octet-stream"})
        assert [up(a, "m.onnx").status_code, up(a, "m.onnx").status_code] == [201, 200]
        r = up(a, "m.onnx")
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited" and int(r.headers["retry-after"]) >= 1
        assert up(b, "m.onnx").status_code == 200  # another key: its own bucket
        m = c.get("/v1/models", headers=bearer(a)).json()["items"][0]
        assert c.post("/v1/deployments", json={"name": "tiny", "model_id": m["id"]}, headers=bearer(a)).status_code == 201
        codes = [c.post("/v1/deployments/tiny/predict", json={"inputs": {"x": [[0.0] * 8]}}, headers=bearer(a)).status_code
                 for _ in range(12)]
        assert codes[:5] == [200] * 5 and 429 in codes, codes
        r = c.post("/v2/models/tiny/infer", headers=bearer(a),
                   json={"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [0.0] * 8}]})
        assert r.status_code == 429 and isinstance(r.json()["error"], str)


TRAVERSALS = ("../../escape.onnx", "..\\..\\escape.onnx", "/tmp/escape.onnx", "a/../../escape.onnx", "C:\\escape.onnx",
              "%2e%2e/escape.onnx")


def test_no_name_like_parameter_reaches_outside_the_data_directory(tmp_path):
    with _client(tmp_path) as c:
        data = models.onnx_model(tmp_path)[0].read_bytes()
        outside = tmp_path / "escape.onnx"
        for name in TRAVERSALS:  # ?filename=, a multipart file name, Content-Disposition
            r = c.post("/v1/models", params={"filename": name}, content=data,
                       headers={"Content-Type": "application/octet-stream"})
            assert r.status_code in (201, 422), (name, r.text)
            if r.status_code == 201:  # percent signs are just characters: stored as a plain name, nowhere else
                assert "/" not in r.json()["files"][0]["path"].replace("%2e%2e/", "")
                c.delete(f"/v1/models/{r.json()['id']}")
            r = c.post("/v1/models", files={"files": (name, data, "application/octet-stream")})
            assert r.status_code in (201, 422), (name, r.text)
            if r.status_code == 201:
                c.delete(f"/v1/models/{r.json()['id']}")
            r = c.post("/v1/models", content=data, headers={"Content-Type": "application/octet-stream",
                                                             "Content-Disposition": f'attachment; filename="{name}"'})
            assert r.status_code in (201, 422), (name, r.text)
            if r.status_code == 201:
                c.delete(f"/v1/models/{r.json()['id']}")
        for member in ("../escape.pb", "/abs/escape.pb", "x/../../escape.pb"):  # archive members, zip and tar
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w") as zf:
                zf.writestr(member, b"x")
            r = c.post("/v1/models", params={"filename": "d.zip"}, content=buf.getvalue(),
                       headers={"Content-Type": "application/zip"})
            assert r.status_code == 422 and r.json()["error"]["code"] == "path_traversal", r.text
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w:gz") as tf:
                info = tarfile.TarInfo(member)
                info.size = 1
                tf.addfile(info, io.BytesIO(b"x"))
            r = c.post("/v1/models", params={"filename": "d.tar.gz"}, content=buf.getvalue(),
                       headers={"Content-Type": "application/gzip"})
            assert r.status_code == 422 and r.json()["error"]["code"] == "path_traversal", r.text
        m = c.post("/v1/models", params={"filename": "m.onnx", "name": "../../escape"}, content=data,
                   headers={"Content-Type": "application/octet-stream"}).json()
        assert m["name"] == "../../escape"  # a label, never a path
        for f in ("../../../etc/passwd", "/etc/passwd", "m.onnx/../../x"):
            r = c.get(f"/v1/models/{m['id']}/download", params={"file": f})
            assert r.status_code == 404 and r.json()["error"]["code"] == "file_not_found"
        for name in ("../escape", "a/b", "..", "%2e%2e", "a\\b"):
            r = c.post("/v1/deployments", json={"name": name, "model_id": m["id"]})
            assert r.status_code == 422, (name, r.text)
        for path in ("/v1/deployments/..%2F..%2Fescape", "/v2/models/..%2Fescape", "/v2/models/x/versions/..%2F1",
                     "/v1/models/..%2F..%2Fescape", "/v1/jobs/..%2Fescape", "/v1/artifacts/..%2Fescape"):
            assert c.get(path).status_code in (400, 404, 422), path
        r = c.post("/v1/keys", json={"name": "../../escape", "scope": "read"})
        assert r.status_code == 201 and r.json()["name"] == "../../escape"
        assert not outside.exists() and not (tmp_path.parent / "escape.onnx").exists()
        assert not any(p.name.startswith("escape") for p in tmp_path.rglob("*") if "srv" not in p.parts)
