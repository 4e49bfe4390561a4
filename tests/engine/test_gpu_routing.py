"""Where GPU checks run: a request asks for ``hardware: gpu`` and the validation and benchmark of
every artifact whose format has a GPU runtime go to the ``gpu`` queue (TensorRT engines always
do); a host without an NVIDIA GPU serves none of it, so those steps wait there, visibly."""

from __future__ import annotations

import pytest

from app.conversion import planner
from app.pipeline import jobs
from tests import models
from tests.helpers import upload


def _steps(source, target, options=None, **kw):
    plan = planner.plan(source, target, options or {}, None)
    return [(kind, name, queue, {k: o[k] for k in ("hardware",) if k in o})
            for kind, name, queue, o in jobs.pipeline_steps(plan, validate=True, benchmark={}, tolerance=None, **kw)]


def test_hardware_gpu_moves_the_checks_of_formats_with_a_gpu_runtime():
    assert _steps("torch_export", "onnx", hardware="gpu") == [
        ("convert", "torch_export->onnx", "cpu", {}),
        ("validate", "validate:onnx", "gpu", {"hardware": "gpu"}),
        ("benchmark", "benchmark:onnx", "gpu", {"hardware": "gpu"})]
    assert _steps("torch_export", "onnx") == [  # by default: each format's own runtime
        ("convert", "torch_export->onnx", "cpu", {}), ("validate", "validate:onnx", "cpu", {}),
        ("benchmark", "benchmark:onnx", "cpu", {})]
    # OpenVINO has no GPU runtime declared: its checks stay where its runtime runs
    assert _steps("onnx", "openvino", hardware="gpu")[1:] == [("validate", "validate:openvino", "intel", {}),
                                                              ("benchmark", "benchmark:openvino", "intel", {})]


def test_tensorrt_engines_are_built_validated_and_benchmarked_on_the_gpu_queue():
    assert _steps("torch_export", "tensorrt", {"precision": "fp16"}) == [
        ("convert", "torch_export->onnx", "cpu", {}), ("validate", "validate:onnx", "cpu", {}),
        ("benchmark", "benchmark:onnx", "cpu", {}),
        ("convert", "onnx->tensorrt", "gpu", {}), ("validate", "validate:tensorrt", "gpu", {}),
        ("benchmark", "benchmark:tensorrt", "gpu", {})]
    plan = planner.plan("onnx", "tensorrt", {"precision": "int8", "calibration": "samples"})
    assert plan.options[0]["precision"] == "int8" and plan.options[0]["max_batch"] == 32
    assert jobs.pipeline_steps(plan, validate=True, benchmark=None, tolerance=None)[1][3]["profile"] == "int8"


def test_int8_calibrated_on_samples_is_refused_without_samples(embedded_client, tmp_path):
    m = upload(embedded_client, models.onnx_model(tmp_path)[0])
    r = embedded_client.post(f"/v1/models/{m['id']}/conversions",
                             json={"target": "tensorrt", "options": {"precision": "int8", "calibration": "samples"}})
    assert r.status_code == 422 and r.json()["error"]["code"] == "missing_samples"


def test_a_gpu_request_waits_visibly_on_a_host_without_a_gpu(embedded_client, tmp_path):
    from app import host

    if host.cuda_device() is not None:
        pytest.skip("this host has a GPU: its embedded executor serves the gpu queue")
    c = embedded_client
    m = upload(c, models.onnx_model(tmp_path)[0])
    r = c.post(f"/v1/models/{m['id']}/conversions", json={"target": "onnx", "options": {"optimize": "basic"},
                                                          "hardware": "gpu", "benchmark": {"batch_sizes": [1]}})
    assert r.status_code == 202, r.text
    assert [(s["kind"], s["queue"], s["options"].get("hardware")) for s in r.json()["steps"]] == [
        ("convert", "cpu", None), ("validate", "gpu", "gpu"), ("benchmark", "gpu", "gpu")]
    job = r.json()
    for _ in range(60):  # the convert step runs here; the validation then waits for a gpu worker
        job = c.get(f"/v1/jobs/{job['id']}", params={"wait": 5}).json()
        if job["status"] != "queued" and job["steps"][0]["status"] == "succeeded":
            break
    assert job["status"] == "waiting_for_hardware", job
    assert [s["status"] for s in job["steps"]] == ["succeeded", "waiting_for_hardware", "pending"]
    # a benchmark of the artifact asked for on gpu waits there too
    b = c.post(f"/v1/artifacts/{job['artifact_ids'][0]}/benchmarks", json={"hardware": "gpu"}).json()
    assert b["status"] == "waiting_for_hardware" and b["steps"][0]["queue"] == "gpu"
    assert c.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    bad = c.post(f"/v1/models/{m['id']}/conversions", json={"target": "onnx", "hardware": "tpu"})
    assert bad.status_code == 422 and bad.json()["error"]["message"].startswith("body.hardware")


def test_formats_list_every_runtime_of_a_format(embedded_client):
    rows = {f["name"]: f for f in embedded_client.get("/v1/formats").json()["formats"]}
    assert [(r["runtime"], r["queue"]) for r in rows["onnx"]["runtimes"]] == [("onnxruntime", "cpu"),
                                                                             ("onnxruntime-cuda", "gpu")]
    assert [r["runtime"] for r in rows["torchscript"]["runtimes"]] == ["torch", "torch-cuda"]
    assert rows["tensorrt"]["convert_from"] == ["onnx"]
    edge = next(e for e in embedded_client.get("/v1/formats").json()["edges"] if e["name"] == "onnx->tensorrt")
    assert edge["queue"] == "gpu" and {"precision", "calibration", "shapes", "max_batch"} <= set(
        edge["options"]["properties"])
