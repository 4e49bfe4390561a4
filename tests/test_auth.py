"""API keys and projects, on every route: the OpenAPI routes are enumerated, so a route added
without the key check fails here. 401 without a key, 403 with a read key on writes, 404 for
another project's objects (as if they did not exist), v1 and v2 alike, on the FastAPI routes and
on the ASGI fast path."""

from __future__ import annotations

import datetime as dt
import re

import numpy as np
import pytest

from app import auth
from tests import models
from tests.helpers import make_settings

PUBLIC = {"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/docs", "/docs/oauth2-redirect",
          "/redoc", "/openapi.json"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One server (the served ASGI app: fast path in front), project A with a model, a converted and
    validated artifact, a job and a deployment; keys of A (admin, write, read) and of B (admin)."""
    from fastapi.testclient import TestClient

    from app.main import create_asgi

    tmp = tmp_path_factory.mktemp("auth")
    settings = make_settings(tmp)
    with TestClient(create_asgi(settings), raise_server_exceptions=False) as c:
        db = c.app.state.db
        assert c.get("/v1/models").status_code == 200  # no key exists yet: open, as the default project
        keys = {}
        for who, project, scope in (("a_admin", "A", "admin"), ("a_write", "A", "write"), ("a_read", "A", "read"),
                                    ("b_admin", "B", "admin")):
            view, token = auth.create_key(db, settings, project=project, scope=scope, name=who)
            assert token.startswith(f"mp_{view['id']}_") and view["prefix"] == f"mp_{view['id']}_"
            keys[who] = token
        c.app.state.auth.forget()  # keys made outside this app (as the CLI does): seen at once here
        a = bearer(keys["a_write"])
        pt2 = models.exported_program(tmp)
        m = c.post("/v1/models", params={"filename": pt2.name}, content=pt2.read_bytes(),
                   headers={**a, "Content-Type": "application/octet-stream"}).json()
        job = c.post(f"/v1/models/{m['id']}/conversions", json={"target": "onnx", "benchmark": False}, headers=a).json()
        job = c.get(f"/v1/jobs/{job['id']}", params={"wait": 300}, headers=a).json()
        assert job["status"] == "succeeded", job
        r = c.post("/v1/deployments", json={"name": "shared-name", "artifact_id": job["artifact_id"]}, headers=a)
        assert r.status_code == 201, r.text
        key_id = re.match(r"mp_([0-9a-f]{8})_", keys["a_read"]).group(1)
        ids = {"model_id": m["id"], "job_id": job["id"], "artifact_id": job["artifact_id"], "name": "shared-name",
               "version": "1", "key_id": key_id, "bench_id": "no-such-benchmark"}
        yield {"client": c, "keys": keys, "ids": ids, "settings": settings, "pt2": pt2}


def _routes(app):
    """Every (method, path) of the OpenAPI schema but the public ones."""
    for path, ops in app.app.openapi()["paths"].items():
        if path not in PUBLIC:
            for method in sorted(ops):
                yield method.upper(), path


def _fill(path: str, ids: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: ids[m.group(1)], path)


def test_every_route_needs_a_key_once_keys_exist(world):
    c, ids = world["client"], world["ids"]
    routes = list(_routes(c.app))
    assert len(routes) >= 30 and ("POST", "/v2/models/{name}/infer") in routes and ("POST", "/v1/keys") in routes
    for method, path in routes + [("GET", "/metrics")]:
        r = c.request(method, _fill(path, ids))
        assert r.status_code == 401, (method, path, r.status_code, r.text)
    r = c.get("/v1/models")
    assert r.json()["error"]["code"] == "missing_api_key" and "Authorization: Bearer" in r.json()["error"]["message"]
    for bad in ("Bearer nope", "Bearer mp_00000000_" + "x" * 40, "Basic abc"):
        r = c.get("/v1/models", headers={"Authorization": bad})
        assert r.status_code == 401 and r.json()["error"]["code"] in ("invalid_api_key", "bad_authorization"), bad
    for path in sorted(PUBLIC - {"/docs/oauth2-redirect", "/redoc", "/docs"}):
        assert c.get(path).status_code == 200, path


def test_a_read_key_reads_and_predicts_but_writes_nothing(world):
    c, ids, read = world["client"], world["ids"], bearer(world["keys"]["a_read"])
    for method, path in _routes(c.app):
        if method == "GET" or path.endswith(("/infer", "/predict")):
            continue
        r = c.request(method, _fill(path, ids), headers=read)
        assert r.status_code == 403, (method, path, r.status_code, r.text)
        assert r.json()["error"]["code"] == "insufficient_scope"
    assert c.get(f"/v1/models/{ids['model_id']}", headers=read).status_code == 200
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    r = c.post("/v1/deployments/shared-name/predict", json={"inputs": {"x": x.tolist()}}, headers=read)
    assert r.status_code == 200, r.text
    body = {"inputs": [{"name": "x", "shape": [2, 8], "datatype": "FP32", "data": x.ravel().tolist()}]}
    assert c.post("/v2/models/shared-name/infer", json=body, headers=read).status_code == 200
    write = bearer(world["keys"]["a_write"])
    assert c.post("/v1/keys", json={"scope": "read"}, headers=write).status_code == 403  # keys: admin only
    assert c.get("/metrics", headers=write).status_code == 403
    assert c.get("/metrics", headers=bearer(world["keys"]["a_admin"])).status_code == 200


def test_another_projects_objects_do_not_exist(world):
    c, ids, b = world["client"], world["ids"], bearer(world["keys"]["b_admin"])
    for method, path in _routes(c.app):
        if "{" not in path:
            continue
        params = {"format": "triton"} if path.endswith("/export") else None  # its one required query parameter
        body = {} if method == "POST" and path.endswith("/benchmark") else None  # its body is required
        r = c.request(method, _fill(path, ids), headers=b, params=params, json=body)
        assert r.status_code == 404, (method, path, r.status_code, r.text)
    lists = {"/v1/models": "items", "/v1/jobs": "items", "/v1/deployments": "items", "/v1/keys": "items"}
    for path, field in lists.items():
        r = c.get(path, headers=b)
        assert r.status_code == 200, (path, r.text)
        if path == "/v1/keys":
            assert {k["project"] for k in r.json()[field]} == {"B"}
        else:
            assert r.json()[field] == [], (path, r.text)
    # the same bytes and the same deployment name in B: B's own, the blob underneath shared
    pt2 = world["pt2"]
    mb = c.post("/v1/models", params={"filename": pt2.name}, content=pt2.read_bytes(),
                headers={**b, "Content-Type": "application/octet-stream"})
    assert mb.status_code == 201 and mb.json()["id"] != ids["model_id"]
    r = c.post("/v1/deployments", json={"name": "shared-name", "model_id": mb.json()["id"]}, headers=b)
    assert r.status_code == 201, r.text
    assert r.json()["versions"][0]["model_id"] == mb.json()["id"] and r.json()["versions"][0]["status"] == "ready"
    a_meta = c.get("/v2/models/shared-name", headers=bearer(world["keys"]["a_read"])).json()
    b_meta = c.get("/v2/models/shared-name", headers=b).json()
    assert a_meta["platform"] == "modelport_onnx" and b_meta["platform"] == "modelport_torch_export"
    assert a_meta["name"] == b_meta["name"] == "shared-name"


def test_deploy_the_upload_itself_and_predict_the_same_answers(world):
    """An app developer with a ready model: no no-op conversion, no validation to wait for."""
    import torch

    c, a = world["client"], bearer(world["keys"]["a_write"])
    r = c.post("/v1/deployments", json={"name": "as-uploaded", "model_id": world["ids"]["model_id"]}, headers=a)
    assert r.status_code == 201, r.text
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    r = c.post("/v1/deployments/as-uploaded/predict", json={"inputs": {"x": x.tolist()}}, headers=a)
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"].values()
    want = torch.export.load(str(world["pt2"])).module()(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(np.array(out, np.float32), want, atol=1e-5)
    both = c.post("/v1/deployments", json={"name": "x", "model_id": world["ids"]["model_id"],
                                           "artifact_id": world["ids"]["artifact_id"]}, headers=a)
    assert both.status_code == 422 and both.json()["error"]["code"] == "bad_deployment_source"


def test_keys_over_the_api_are_shown_once_revocable_and_expire(world):
    c, admin = world["client"], bearer(world["keys"]["a_admin"])
    r = c.post("/v1/keys", json={"name": "ci", "scope": "write"}, headers=admin)
    assert r.status_code == 201, r.text
    made = r.json()
    token = made["key"]
    assert made["project"] == "A" and made["scope"] == "write" and "shown once" in made["note"]
    listed = c.get("/v1/keys", headers=admin).json()["items"]
    assert made["id"] in {k["id"] for k in listed} and all("key" not in k for k in listed)
    assert token not in c.get("/v1/keys", headers=admin).text
    assert c.get("/v1/models", headers=bearer(token)).status_code == 200
    assert c.delete(f"/v1/keys/{made['id']}", headers=admin).json()["revoked_at"]
    r = c.get("/v1/models", headers=bearer(token))
    assert r.status_code == 401 and r.json()["error"]["code"] == "revoked_api_key"
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    _, old = auth.create_key(c.app.state.db, world["settings"], project="A", scope="read", expires_at=past)
    r = c.get("/v1/models", headers=bearer(old))
    assert r.status_code == 401 and r.json()["error"]["code"] == "expired_api_key"
    with world["client"].app.state.db.session() as s:  # stored: an HMAC of the secret, never the key
        from app.catalog import repo

        row = repo.get_key(s, made["id"])
        assert token.split("_", 2)[2] not in row.secret_hash and len(row.secret_hash) == 64


def test_authentication_can_be_required_with_no_key(tmp_path):
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app(make_settings(tmp_path, auth="required"))) as c:
        r = c.get("/v1/models")
        assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
        assert c.get("/healthz").status_code == 200


def test_no_key_stays_no_key_while_the_catalog_is_unreachable(tmp_path):
    """Auth `auto` with no key: the answer, due again every CACHE_S, stands while the catalog is
    unreachable (no key can be made meanwhile), so inference goes on through an outage; with no
    answer yet, the catalog's error is raised (the routes make it a 503)."""
    import time

    import sqlalchemy as sa

    from app.catalog.db import Database, upgrade
    from tests.faults import free_ports

    settings = make_settings(tmp_path)
    db = Database(f"sqlite:///{tmp_path / 'c.db'}")
    upgrade(db.engine)
    a = auth.Authenticator(db, settings)
    assert a.required() is False
    gone = Database(f"postgresql+psycopg://postgres@127.0.0.1:{free_ports(1)[0]}/none")  # nothing listens there
    a.db = gone
    a._required = (time.monotonic() - auth.CACHE_S - 1, False)  # due to be asked again
    assert a.required() is False
    with pytest.raises(sa.exc.OperationalError):
        auth.Authenticator(gone, settings).required()
    db.dispose()
    gone.dispose()
