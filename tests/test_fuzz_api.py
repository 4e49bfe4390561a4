"""The whole OpenAPI (v1 and v2) under schemathesis, against a real server on loopback: without
keys, with an admin key, and with keys required but none sent. Every response must be no 5xx and
inside the documented schema (status code, content type, body); the service is healthy after and
no temp file is left. Bounded: ``MODELPORT_FUZZ_EXAMPLES`` cases per operation and mode (default
50, ~3 000 cases in all); `bench/fuzz.py` runs the same with more."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from tests import models
from tests.helpers import make_settings, upload

EXAMPLES = int(os.environ.get("MODELPORT_FUZZ_EXAMPLES", "50"))
SLOW = {"POST /v1/models": 4, "PUT /v1/models/{model_id}/samples": 6}  # each runs the inspection child / an npz


def serve(settings):
    import uvicorn

    from app.main import create_asgi, http_protocol

    app = create_asgi(settings)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error",
                                        http=http_protocol(settings)))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    return app, srv, thread, f"http://127.0.0.1:{port}"


def run_fuzz(base: str, *, headers: dict[str, str], real: dict[str, str], examples: int, seed: int = 0,
             deadline_s: float = 120.0) -> dict:
    """schemathesis over every operation of ``base``/openapi.json; half the cases get a real id or
    name in their path (``real``) so they reach past the 404s. Returns counts and the failures."""
    import schemathesis
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    stats = {"cases": 0, "failures": [], "statuses": {}, "operations": 0}
    stop_at = time.monotonic() + deadline_s
    ops = [r.ok() for r in schema.get_all_operations()]
    # making a key turns authentication on (MODELPORT_AUTH=auto): that one goes last
    for op in sorted(ops, key=lambda o: (o.method.upper(), o.path) == ("POST", "/v1/keys")):
        stats["operations"] += 1
        _fuzz_operation(op, base, headers, real, examples, seed, stop_at, checks, stats)
    print(f"fuzz: {stats['operations']} operations, {stats['cases']} cases, statuses {sorted(stats['statuses'].items())}, "
          f"{len(stats['failures'])} failures")
    return stats


def _fuzz_operation(op, base, headers, real, examples, seed, stop_at, checks, stats) -> None:
    import hypothesis

    label = f"{op.method.upper()} {op.path}"
    counter = {"i": 0}

    @hypothesis.settings(max_examples=min(examples, SLOW.get(label, examples)), deadline=None, database=None,
                         derandomize=True, suppress_health_check=list(hypothesis.HealthCheck),
                         phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate])
    @hypothesis.seed(seed)
    @hypothesis.given(case=op.as_strategy())
    def one(case):
        if time.monotonic() > stop_at:
            return
        counter["i"] += 1
        if counter["i"] % 2 == 0:
            for key, value in real.items():
                if case.path_parameters and key in case.path_parameters:
                    case.path_parameters[key] = value
        response = case.call(base_url=base, headers=headers, timeout=60)
        stats["cases"] += 1
        stats["statuses"][response.status_code] = stats["statuses"].get(response.status_code, 0) + 1
        for check in checks:
            try:
                case.validate_response(response, checks=[check])
            except (Exception, BaseExceptionGroup) as e:  # noqa: BLE001 - every failed check is a finding
                why = " / ".join(str(x).splitlines()[0] for x in getattr(e, "exceptions", [e]))
                stats["failures"].append(f"{label} -> {response.status_code}: {why[:300]} | "
                                         f"body: {response.text[:200]!r}")

    one()


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory):
    """The app on embedded catalog and store, jobs queued on our own Redis (none run: the fuzz
    measures the API, not the converters), with a model, its deployment and a job to aim at."""
    import shutil
    import subprocess

    tmp = tmp_path_factory.mktemp("fuzz")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        rport = s.getsockname()[1]
    redis = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(rport), "--bind",
                              "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    settings = make_settings(tmp, broker_url=f"redis://127.0.0.1:{rport}/0", request_header_timeout_s=10)
    app, srv, thread, base = serve(settings)
    import httpx

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
        redis.terminate()
        redis.wait(20)


def _healthy(t) -> None:
    c = t["client"]
    assert c.get("/healthz").status_code == 200
    assert c.get("/readyz").status_code == 200
    tmp = t["settings"].tmp_dir
    assert not tmp.exists() or list(tmp.iterdir()) == [], list(tmp.iterdir())[:5]


def test_fuzz_without_keys(fuzz_target):
    stats = run_fuzz(fuzz_target["base"], headers={}, real=fuzz_target["real"], examples=EXAMPLES)
    assert stats["statuses"].get(401, 0) <= EXAMPLES, stats["statuses"]  # only after POST /v1/keys made one
    assert stats["failures"] == [], "\n".join(stats["failures"][:30])
    assert stats["operations"] >= 35 and stats["cases"] >= stats["operations"] * min(EXAMPLES, 3), stats
    _healthy(fuzz_target)


def test_fuzz_with_an_admin_key_and_with_keys_required_but_none_sent(fuzz_target):
    from app import auth

    app = fuzz_target["app"]
    _, key = auth.create_key(app.state.db, fuzz_target["settings"], project="default", scope="admin", name="fuzz")
    app.state.auth.forget()
    keyed = run_fuzz(fuzz_target["base"], headers={"Authorization": f"Bearer {key}"}, real=fuzz_target["real"],
                     examples=max(5, EXAMPLES // 2), seed=1)
    assert keyed["failures"] == [], "\n".join(keyed["failures"][:30])
    bare = run_fuzz(fuzz_target["base"], headers={}, real=fuzz_target["real"], examples=max(3, EXAMPLES // 5), seed=2)
    assert bare["failures"] == [], "\n".join(bare["failures"][:30])
    open_routes = {401, 200, 404, 405, 422, 503}  # health routes answer without a key
    assert set(bare["statuses"]) <= open_routes and bare["statuses"].get(401, 0) > bare["cases"] // 2, bare["statuses"]
    _healthy(fuzz_target)
