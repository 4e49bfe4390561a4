"""Deployments and both serving protocols, against a real server: v1 JSON/npy/npz, KServe v2 with
tritonclient (binary on and off), dynamic batching correctness, version fallback, metrics."""

from __future__ import annotations

import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests import models
from tests.helpers import upload


def convert(client, model_id: str, target: str = "onnx", **body) -> dict:
    r = client.post(f"/v1/models/{model_id}/conversions", json={"target": target, "benchmark": False, **body})
    job = client.get(f"/v1/jobs/{r.json()['id']}", params={"wait": 300}).json()
    assert job["status"] == "succeeded", job
    return client.get(f"/v1/artifacts/{job['artifact_id']}").json()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app on embedded defaults behind a real uvicorn on a free port (tritonclient needs HTTP)."""
    from fastapi.testclient import TestClient

    from app.main import create_asgi
    from tests.helpers import make_settings, serve

    tmp = tmp_path_factory.mktemp("serving")
    # every request through the thread pool and the batcher here; the inline path has its own test
    settings = make_settings(tmp, serving_inline_us=0)
    app = create_asgi(settings)  # as `modelport serve` runs it: inference routes on the fast path
    srv, thread, port = serve(app, settings)
    import httpx

    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300)
    client.app = app
    pt2 = models.exported_program(tmp)
    m = upload(client, pt2)
    onnx_art = convert(client, m["id"], "onnx")
    assert onnx_art["validation"]["status"] == "passed"
    unvalidated = convert(client, m["id"], "openvino", validate=False)
    yield {"client": client, "url": f"127.0.0.1:{port}", "pt2": pt2, "onnx": onnx_art,
           "unvalidated": unvalidated, "tmp": tmp}
    client.close()
    srv.should_exit = True
    thread.join(20)
    _ = TestClient  # imported for parity with other suites


def reference(pt2: Path, x: np.ndarray) -> np.ndarray:
    import torch

    return torch.export.load(pt2).module()(torch.from_numpy(x)).detach().numpy()


def deploy(c, name: str, artifact_id: str, **kw) -> dict:
    r = c.post("/v1/deployments", json={"name": name, "artifact_id": artifact_id, **kw})
    assert r.status_code == 201, r.text
    return r.json()


def test_deploy_and_predict_v1_json_npy_npz(server):
    c = server["client"]
    d = deploy(c, "tiny", server["onnx"]["id"])
    assert d["serving_version"] == 1 and d["versions"][0]["status"] == "ready"
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    want = reference(server["pt2"], x)
    r = c.post("/v1/deployments/tiny/predict", json={"inputs": {"x": x.tolist()}})
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"].values()
    np.testing.assert_allclose(np.array(out, np.float32), want, atol=1e-5)
    buf = io.BytesIO()
    np.save(buf, x)
    r = c.post("/v1/deployments/tiny/predict", content=buf.getvalue(),
               headers={"Content-Type": "application/x-npy", "Accept": "application/x-npz"})
    assert r.headers["content-type"] == "application/x-npz"
    with np.load(io.BytesIO(r.content)) as z:
        np.testing.assert_allclose(z[z.files[0]], want, atol=1e-5)
    buf = io.BytesIO()
    np.savez(buf, x=x)
    r = c.post("/v1/deployments/tiny/predict", content=buf.getvalue())  # no Content-Type: sniffed
    assert r.status_code == 200
    listed = c.get("/v1/deployments").json()["items"]
    assert [i["name"] for i in listed] == ["tiny"]


def test_bad_inputs_are_4xx_naming_the_input(server):
    c = server["client"]
    deploy(c, "strict", server["onnx"]["id"])
    cases = [
        (c.post("/v1/deployments/strict/predict", json={"inputs": {"y": [[0.0] * 8]}}), 400, "'x'"),
        (c.post("/v1/deployments/strict/predict", json={"inputs": {"x": [[0.0] * 5]}}), 400, "8"),
        (c.post("/v1/deployments/strict/predict", json={"inputs": {"x": [["a"] * 8]}}), 400, "x"),
        (c.post("/v1/deployments/strict/predict", content=b"{not json"), 400, "JSON"),
        (c.post("/v1/deployments/nope/predict", json={"inputs": {}}), 404, "nope"),
        (c.post("/v1/deployments/strict/predict", params={"version": "9"}, json={"inputs": {}}), 404, "version 9"),
    ]
    for r, status, needle in cases:
        assert r.status_code == status, (r.status_code, r.text)
        assert needle in r.json()["error"]["message"], r.text


def test_only_validated_artifacts_deploy_unless_forced(server):
    c = server["client"]
    r = c.post("/v1/deployments", json={"name": "ov", "artifact_id": server["unvalidated"]["id"]})
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_validated"
    assert "force" in r.json()["error"]["message"]
    d = deploy(c, "ov", server["unvalidated"]["id"], force=True,
               runtime={"threads": 1, "precision": "fp32"})
    assert d["versions"][0]["forced"] is True and d["versions"][0]["status"] == "ready"


def test_failed_version_leaves_the_previous_one_serving(server):
    c = server["client"]
    deploy(c, "fallback", server["onnx"]["id"])
    # a second artifact whose bytes are gone from the store: its version cannot load
    pt2b = models.exported_program(server["tmp"], name="other.pt2")
    broken = convert(c, upload(c, pt2b)["id"], "onnx", options={"opset": 17})
    store = c.app.state.store
    for f in broken["files"]:
        store.delete(f"blobs/sha256/{f['sha256'][:2]}/{f['sha256']}")
    d = deploy(c, "fallback", broken["id"])
    v2 = next(v for v in d["versions"] if v["version"] == 2)
    assert v2["status"] == "failed" and v2["reason"]
    assert d["serving_version"] == 1
    x = np.ones((1, 8), np.float32)
    r = c.post("/v1/deployments/fallback/predict", json={"inputs": {"x": x.tolist()}})
    assert r.status_code == 200
    r = c.post("/v1/deployments/fallback/predict", params={"version": "2"}, json={"inputs": {"x": x.tolist()}})
    assert r.status_code == 503 and "failed" in r.json()["error"]["message"]


def test_tritonclient_binary_and_json(server):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    c = server["client"]
    deploy(c, "kserve", server["onnx"]["id"])
    tc = httpclient.InferenceServerClient(server["url"])
    assert tc.is_server_live() and tc.is_server_ready()
    assert tc.is_model_ready("kserve")
    meta = tc.get_model_metadata("kserve")
    assert meta["inputs"][0]["name"] == "x" and meta["inputs"][0]["datatype"] == "FP32"
    assert meta["inputs"][0]["shape"] == [-1, 8]
    x = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
    want = reference(server["pt2"], x)
    out_name = meta["outputs"][0]["name"]
    for binary in (True, False):
        inp = httpclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        res = tc.infer("kserve", [inp], outputs=[httpclient.InferRequestedOutput(out_name, binary_data=binary)])
        np.testing.assert_allclose(res.as_numpy(out_name), want, atol=1e-5)
    with pytest.raises(InferenceServerException, match="unknown|no deployment"):
        tc.infer("missing", [inp])
    bad = httpclient.InferInput("x", [2, 5], "FP32")
    bad.set_data_from_numpy(np.zeros((2, 5), np.float32))
    with pytest.raises(InferenceServerException, match="dim 1"):
        tc.infer("kserve", [bad])
    # no Content-Type at all, JSON tensors
    r = c.post("/v2/models/kserve/infer", content=json.dumps({"inputs": [
        {"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [0.5] * 8}]}).encode(),
        headers={"Content-Type": ""})
    assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [1, 3]
    err = c.post("/v2/models/kserve/infer", content=b"{}")
    assert err.status_code == 400 and set(err.json()) == {"error"}
    assert c.get("/v2").json()["extensions"] == ["binary_tensor_data"]


def test_dynamic_batching_gives_the_same_answers(server):
    import tritonclient.http as httpclient

    c = server["client"]
    deploy(c, "batched", server["onnx"]["id"], batching={"max_batch_size": 8, "max_queue_delay_ms": 20})
    info = c.get("/v1/deployments/batched").json()
    assert "dynamic batching" in (info["versions"][0]["batching_note"] or "")
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((1 + i % 2, 8)).astype(np.float32) for i in range(24)]
    want = [reference(server["pt2"], x) for x in xs]

    def one(x):
        tc = httpclient.InferenceServerClient(server["url"])
        inp = httpclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        res = tc.infer("batched", [inp])
        return res.as_numpy(res.get_response()["outputs"][0]["name"])

    with ThreadPoolExecutor(12) as pool:
        got = list(pool.map(one, xs))
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5)
    metrics = c.get("/metrics").text
    count = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                if line.startswith('modelport_inference_exec_count_total{model="batched"'))
    rows = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith('modelport_inference_count_total{model="batched"'))
    assert rows == sum(x.shape[0] for x in xs)
    assert count < len(xs), "concurrent requests were never merged into a batch"


def test_metrics_and_delete(server):
    c = server["client"]
    deploy(c, "gone", server["onnx"]["id"])
    c.post("/v1/deployments/gone/predict", json={"inputs": {"x": [[0.0] * 8]}})
    c.post("/v1/deployments/gone/predict", json={"inputs": {"x": [[0.0] * 5]}})
    text = c.get("/metrics").text
    assert 'modelport_inference_request_success_total{model="gone",version="1"} 1.0' in text
    assert 'modelport_inference_request_failure_total{model="gone",reason="bad_input",version="1"} 1.0' in text
    assert "modelport_inference_request_duration_seconds_bucket" in text
    assert 'modelport_jobs{status="succeeded"}' in text
    assert c.delete("/v1/deployments/gone").status_code == 204
    assert c.post("/v1/deployments/gone/predict", json={"inputs": {"x": [[0.0] * 8]}}).status_code == 404


def test_tiny_models_run_inline_and_answer_the_same(tmp_path, server):
    """A model whose call is shorter than a thread hop runs batch-1 requests on the event loop;
    larger requests still go through the pool. Same answers either way."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from tests.helpers import make_settings

    settings = make_settings(tmp_path, serving_inline_us=10_000)  # tiny model: certainly under 10 ms
    with TestClient(create_app(settings)) as c:
        m = upload(c, server["pt2"])
        art = convert(c, m["id"], "onnx")
        d = deploy(c, "inline", art["id"], batching={"max_batch_size": 8})
        assert "runs inline" in d["versions"][0]["batching_note"]
        for rows in (1, 3):
            x = np.random.default_rng(rows).standard_normal((rows, 8)).astype(np.float32)
            r = c.post("/v1/deployments/inline/predict", json={"inputs": {"x": x.tolist()}})
            (out,) = r.json()["outputs"].values()
            np.testing.assert_allclose(np.array(out, np.float32), reference(server["pt2"], x), atol=1e-5)


def test_catalog_lookups_never_block_the_event_loop(server, monkeypatch):
    """Version lookups go to the catalog on a thread: a slow catalog never stalls requests for
    deployments already seen (they use the cached versions while a thread refreshes them), and an
    unreachable one keeps them serving while new names get a 503 that says why."""
    from app.serving import runtime

    c = server["client"]
    deploy(c, "steady", server["onnx"]["id"])
    body = {"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [0.5] * 8}]}
    assert c.post("/v2/models/steady/infer", json=body).status_code == 200
    cache = c.app.state.models
    real = runtime.repo.deployment_versions
    entered = {"steady": threading.Event(), "never-deployed": threading.Event()}
    release = threading.Event()

    def slow(s, name, *project):  # a catalog that answers only when the test lets it
        entered.setdefault(name, threading.Event()).set()
        assert release.wait(60), "the test never released the catalog"
        return real(s, name, *project)

    monkeypatch.setattr(runtime.repo, "deployment_versions", slow)
    monkeypatch.setattr(cache, "FRESH_S", 0.0)  # the cached versions of "steady" are due for a refresh
    with ThreadPoolExecutor(1) as pool:
        unknown = pool.submit(c.post, "/v2/models/never-deployed/infer", json=body)  # must query: waits on a thread
        assert entered["never-deployed"].wait(30)
        # both lookups now hang in the catalog until released, and the release comes only after this
        # answer: a loop that waited on the catalog would time out here instead of answering
        r = c.post("/v2/models/steady/infer", json=body, timeout=20)
        assert r.status_code == 200, r.text
        assert entered["steady"].wait(30), "the stale versions were not refreshed on a thread"
        assert not unknown.done()
        release.set()
        assert unknown.result(30).status_code == 404

    def down(s, name, *project):
        raise ConnectionError("catalog down")

    deadline = time.monotonic() + 30
    while "steady" in cache._refreshing:  # the released refresh finishes; the next one will fail
        assert time.monotonic() < deadline, "the refresh of 'steady' never finished"
        time.sleep(0.01)
    monkeypatch.setattr(runtime.repo, "deployment_versions", down)
    for stale_s in (30.0, 0.0):  # refreshed on a thread while the cached versions answer; or looked up first
        monkeypatch.setattr(cache, "STALE_S", stale_s)
        for _ in range(3):
            assert c.post("/v2/models/steady/infer", json=body).status_code == 200
            assert c.post("/v1/deployments/steady/predict", json={"inputs": {"x": [[0.5] * 8]}}).status_code == 200
        assert c.get("/v2/models/steady").status_code == 200  # metadata from the versions seen last
        assert c.get("/v2/models/steady/ready").status_code == 503
    r = c.post("/v2/models/other-new-name/infer", json=body)
    assert r.status_code == 503 and "catalog is unreachable" in r.json()["error"], r.text
    r = c.post("/v1/deployments/other-new-name/predict", json={"inputs": {"x": [[0.5] * 8]}})
    assert r.status_code == 503 and r.json()["error"]["code"] == "catalog_unavailable", r.text


def test_a_version_deployed_through_another_replica_is_found_at_once(server):
    """The cache says v1 only; a request naming v2 looks the catalog up before answering 404."""
    c = server["client"]
    deploy(c, "grows", server["onnx"]["id"])
    body = {"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [0.5] * 8}]}
    assert c.post("/v2/models/grows/infer", json=body).status_code == 200  # cached: [v1]
    cache = c.app.state.models
    real_invalidate = cache.invalidate
    cache.invalidate = lambda name: None  # as if v2 were deployed by another replica
    try:
        deploy(c, "grows", server["onnx"]["id"])
    finally:
        cache.invalidate = real_invalidate
    r = c.post("/v2/models/grows/versions/2/infer", json=body)
    assert r.status_code == 200 and r.json()["model_version"] == "2", r.text
    assert c.post("/v2/models/grows/versions/3/infer", json=body).status_code == 404
