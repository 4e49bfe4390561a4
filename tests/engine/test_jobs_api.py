"""Conversion jobs through the HTTP API on the embedded executor (and on PostgreSQL + S3):
plan, queue, run in the sandbox, store the artifact with lineage, report failures."""

from __future__ import annotations

import numpy as np
import pytest

from tests import models
from tests.helpers import upload


def convert(client, model_id: str, target: str, **body) -> tuple[int, dict]:
    r = client.post(f"/v1/models/{model_id}/conversions", json={"target": target, **body})
    return r.status_code, r.json()


def wait(client, job_id: str, seconds: float = 240) -> dict:
    job = client.get(f"/v1/jobs/{job_id}", params={"wait": seconds}).json()
    assert job["status"] in ("succeeded", "failed", "cancelled"), job
    return job


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    out = tmp_path_factory.mktemp("jobs")
    return {"ckpt": models.checkpoint(out), "pt2": models.exported_program(out), "ts": models.torchscript(out)}


def test_state_dict_to_safetensors_end_to_end(client, files):
    import torch
    from safetensors.numpy import load

    m = upload(client, files["ckpt"])
    status, job = convert(client, m["id"], "safetensors")
    assert status == 202
    assert job["plan"] == ["pytorch->safetensors", "validate:safetensors", "benchmark:safetensors"]
    assert [st["kind"] for st in job["steps"]] == ["convert", "validate", "benchmark"]
    assert job["status"] in ("queued", "running", "succeeded")
    again_status, again = convert(client, m["id"], "safetensors", options={})
    assert again_status == 200 and again["id"] == job["id"]  # the same request makes one job
    job = wait(client, job["id"])
    assert job["status"] == "succeeded", job
    assert job["steps"][0]["attempts"] == 1 and job["steps"][0]["seconds"] > 0
    art = client.get(f"/v1/artifacts/{job['artifact_id']}").json()
    assert art["format"] == "safetensors"
    assert art["lineage"]["model_id"] == m["id"] and art["lineage"]["edge"] == "pytorch->safetensors"
    assert art["lineage"]["toolchain"]["torch"].startswith("2.")
    got = load(client.get(f"/v1/artifacts/{art['id']}/download").content)
    ckpt = torch.load(files["ckpt"], weights_only=True)
    want = {f"model.{k}": v.numpy() for k, v in ckpt["model"].items()}
    for k, v in want.items():
        np.testing.assert_array_equal(got[k], v)
    listed = client.get(f"/v1/models/{m['id']}/artifacts").json()["items"]
    assert [a["id"] for a in listed] == [art["id"]]
    assert client.get("/v1/jobs", params={"model_id": m["id"]}).json()["total"] == 1
    assert "pytorch->safetensors" in client.get(f"/v1/jobs/{job['id']}/logs").text
    if client.settings.storage_url:  # S3: a presigned URL that serves the bytes
        import urllib.request

        with urllib.request.urlopen(art["download_url"]) as r:
            assert r.read() == client.get(f"/v1/artifacts/{art['id']}/download").content
    # deleting the model removes its jobs, artifacts and blobs
    assert client.delete(f"/v1/models/{m['id']}").status_code == 204
    assert client.get(f"/v1/artifacts/{art['id']}").status_code == 404
    from app.ingest import blobs

    assert art["digest"] in blobs.sweep(client.app.state.db, client.app.state.store, 0)  # after the grace period
    assert not client.app.state.store.exists(f"blobs/sha256/{art['digest'][:2]}/{art['digest']}")


def test_two_step_route_keeps_lineage(embedded_client, files):
    import onnxruntime as ort
    import torch

    m = upload(embedded_client, files["pt2"])
    status, job = convert(embedded_client, m["id"], "onnx", options={"precision": "fp16"}, benchmark=False)
    assert status == 202
    assert job["plan"] == ["torch_export->onnx", "validate:onnx", "onnx->onnx:transform", "validate:onnx"]
    job = wait(embedded_client, job["id"])
    assert job["status"] == "succeeded", job
    first, last = job["artifact_ids"]
    a2 = embedded_client.get(f"/v1/artifacts/{last}").json()
    assert a2["lineage"]["parent_artifact_id"] == first
    assert a2["lineage"]["options"]["precision"] == "fp16"
    data = embedded_client.get(f"/v1/artifacts/{last}/download").content
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    want = torch.export.load(files["pt2"]).module()(torch.from_numpy(x)).detach().numpy()
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x})
    assert np.abs(got.astype(np.float32) - want).max() < 2e-2


def test_bad_requests_are_clear_4xx(embedded_client, files):
    m = upload(embedded_client, files["ts"])
    cases = [
        (convert(embedded_client, m["id"], "caffe"), 422, "unknown_target"),
        (convert(embedded_client, upload(embedded_client, files["ckpt"])["id"], "onnx"), 422, "no_route"),
        (convert(embedded_client, m["id"], "openvino", options={"bogus": 1},
                 input_specs={"x": {"shape": [2, 8]}}), 422, "invalid_options"),
        (convert(embedded_client, m["id"], "onnx", input_specs={"x": {"shape": [2, 8], "dtype": "float99"}}),
         422, "invalid_input_specs"),
        (convert(embedded_client, m["id"], "onnx", input_specs={"y": {"shape": [2, 8]}}), 422, "missing_input_specs"),
    ]
    for (status, body), want_status, code in cases:
        assert status == want_status and body["error"]["code"] == code, body
    r = embedded_client.post(f"/v1/models/{m['id']}/conversions", json={"target": "onnx", "colour": "red"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    assert embedded_client.post("/v1/models/nope/conversions", json={"target": "onnx"}).status_code == 404
    assert embedded_client.get("/v1/jobs/nope").json()["error"]["code"] == "job_not_found"


def test_converter_failure_is_a_structured_failed_job(embedded_client, files):
    m = upload(embedded_client, files["ts"])
    # the model takes [N, 8]; shapes of the wrong width make the exporter fail inside the sandbox
    status, job = convert(embedded_client, m["id"], "onnx", input_specs={"x": {"shape": [2, 5]}}, benchmark=False)
    assert status == 202
    job = wait(embedded_client, job["id"])
    assert job["status"] == "failed"
    err = job["error"]
    assert err["step"] == 0 and err["edge"] == "torchscript->onnx" and err["message"]
    assert job["steps"][0]["status"] == "failed"
    assert embedded_client.get(f"/v1/jobs/{job['id']}/logs").text.strip()
    # a failed request can be made again (a new job), and still fails the same way
    status2, job2 = convert(embedded_client, m["id"], "onnx", input_specs={"x": {"shape": [2, 5]}}, benchmark=False)
    assert status2 == 202 and job2["id"] != job["id"]
    wait(embedded_client, job2["id"])


def test_formats_and_plan_endpoints_read_the_registry(embedded_client):
    body = embedded_client.get("/v1/formats").json()
    onnx = next(f for f in body["formats"] if f["name"] == "onnx")
    assert "openvino" in onnx["convert_to"] and "torch_export" in onnx["convert_from"]
    assert any(e["name"] == "onnx->openvino" and e["queue"] == "intel" for e in body["edges"])
    plan = embedded_client.get("/v1/formats/plan", params={"source": "torchscript", "target": "openvino"}).json()
    assert [s["edge"] for s in plan["steps"]] == ["torchscript->onnx", "onnx->openvino"]
    assert all(s["worker_available"] for s in plan["steps"])
    bad = embedded_client.get("/v1/formats/plan", params={"source": "pytorch", "target": "onnx"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "no_route"

