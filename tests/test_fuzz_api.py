"""The whole OpenAPI (v1 and v2) under schemathesis, against a real server on loopback: without
keys, with an admin key, and with keys required but none sent. Every response must be no 5xx and
inside the documented schema (status code, content type, body); the service is healthy after and
no temp file is left. Bounded: ``MODELPORT_FUZZ_EXAMPLES`` cases per operation and mode (default
50: ~2 700 cases, under a minute here); `bench/fuzz.py` runs the same with more."""

from __future__ import annotations

import os

import pytest

from tests import models
from tests.faults import OwnRedis
from tests.fuzzing import run_api_fuzz, serve
from tests.helpers import make_settings, upload

EXAMPLES = int(os.environ.get("MODELPORT_FUZZ_EXAMPLES", "50"))


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory):
    """The app on embedded catalog and store, jobs queued on our own Redis (none run: the fuzz
    measures the API, not the converters), with a model, its deployment and a job to aim at."""
    import httpx

    tmp = tmp_path_factory.mktemp("fuzz")
    redis = OwnRedis(tmp / "redis")
    redis.start()
    settings = make_settings(tmp, broker_url=redis.url, request_header_timeout_s=10)
    app, srv, thread, base = serve(settings)
    try:
        with httpx.Client(base_url=base, timeout=60) as c:
            m = upload(c, models.onnx_model(tmp)[0])
            assert c.post("/v1/deployments", json={"name": "tiny", "model_id": m["id"]}).status_code == 201
            job = c.post(f"/v1/models/{m['id']}/conversions", json={"target": "openvino"}).json()
            yield {"base": base, "settings": settings, "app": app, "client": c,
                   "real": {"model_id": m["id"], "name": "tiny", "job_id": job["id"], "version": "1"}}
    finally:
        srv.should_exit = True
        thread.join(30)
        redis.stop()


def _healthy(t) -> None:
    c = t["client"]
    assert c.get("/healthz").status_code == 200
    assert c.get("/readyz").status_code == 200
    tmp = t["settings"].tmp_dir
    assert not tmp.exists() or list(tmp.iterdir()) == [], list(tmp.iterdir())[:5]


def test_fuzz_without_keys(fuzz_target):
    stats = run_api_fuzz(fuzz_target["base"], headers={}, real=fuzz_target["real"], examples=EXAMPLES)
    assert stats["failures"] == [], "\n".join(stats["failures"][:30])
    assert stats["operations"] >= 35 and stats["cases"] >= stats["operations"] * min(EXAMPLES, 3), stats
    assert stats["statuses"].get(401, 0) <= EXAMPLES, stats["statuses"]  # only after POST /v1/keys made one
    _healthy(fuzz_target)


def test_fuzz_with_an_admin_key_and_with_keys_required_but_none_sent(fuzz_target):
    from app import auth

    app = fuzz_target["app"]
    _, key = auth.create_key(app.state.db, fuzz_target["settings"], project="default", scope="admin", name="fuzz")
    app.state.auth.forget()
    keyed = run_api_fuzz(fuzz_target["base"], headers={"Authorization": f"Bearer {key}"},
                         real=fuzz_target["real"], examples=max(5, EXAMPLES // 2), seed=1)
    assert keyed["failures"] == [], "\n".join(keyed["failures"][:30])
    bare = run_api_fuzz(fuzz_target["base"], headers={}, real=fuzz_target["real"], examples=max(3, EXAMPLES // 5),
                        seed=2)
    assert bare["failures"] == [], "\n".join(bare["failures"][:30])
    open_routes = {401, 200, 404, 405, 422, 503}  # health routes answer without a key
    assert set(bare["statuses"]) <= open_routes and bare["statuses"].get(401, 0) > bare["cases"] // 2, bare["statuses"]
    _healthy(fuzz_target)
