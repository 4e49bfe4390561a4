"""Every artifact proven and measured: validation and benchmark steps in the job pipeline, the
format report, report-all, sample inputs, benchmark re-runs; known-bad conversions caught."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from tests import models
from tests.helpers import FAST_BENCH, run_job, upload


@pytest.fixture(scope="module")
def pt2(tmp_path_factory) -> Path:
    return models.exported_program(tmp_path_factory.mktemp("pipeline"))


def test_converted_artifact_is_validated_and_benchmarked(embedded_client, pt2):
    m = upload(embedded_client, pt2)
    job = run_job(embedded_client, m["id"], "onnx", benchmark=FAST_BENCH)
    assert [s["kind"] for s in job["steps"]] == ["convert", "validate", "benchmark"]
    art = embedded_client.get(f"/v1/artifacts/{job['artifact_id']}").json()
    v = art["validation"]
    assert v["status"] == "passed" and v["profile"] == "fp32" and v["reference"] == f"model:{m['id']}"
    assert v["max_abs_err"] < 1e-4
    labels = [s["label"] for s in v["report"]["input_sets"]]
    assert len(labels) >= 2, labels  # two values of the dynamic batch dimension
    assert art["deployable"] is True
    b = art["benchmark"]
    assert b["status"] == "ok" and b["p50_ms"] > 0 and b["p99_ms"] >= b["p50_ms"] and b["load_ms"] > 0
    batches = b["results"]["batches"]
    assert batches["1"]["iterations"] > 0 and batches["4"]["iterations"] > 0
    # throughput is per sample: batch 4 moves about 4 samples per call
    assert batches["4"]["throughput"] == pytest.approx(4 * 1000 / batches["4"]["mean_ms"], rel=0.35)
    assert b["host"]["logical_cores"] >= 1 and b["host"]["cpu"]
    assert embedded_client.app.state.store.exists(b["object_key"])  # results as JSON in the object store too


def test_state_dict_to_safetensors_is_proven_exact(embedded_client, tmp_path):
    m = upload(embedded_client, models.checkpoint(tmp_path))
    job = run_job(embedded_client, m["id"], "safetensors", benchmark=FAST_BENCH)
    art = embedded_client.get(f"/v1/artifacts/{job['artifact_id']}").json()
    assert art["validation"]["status"] == "passed" and art["validation"]["profile"] == "exact"
    assert art["benchmark"]["load_ms"] > 0  # weights only: load time is what is measured


def test_samples_are_used_and_benchmarks_rerun(embedded_client, pt2):
    m = upload(embedded_client, pt2)
    buf = io.BytesIO()
    np.savez(buf, x=np.ones((5, 8), np.float32))
    r = embedded_client.put(f"/v1/models/{m['id']}/samples", content=buf.getvalue())
    assert r.status_code == 200 and r.json()["inputs"] == {"x": ["float32", [5, 8]]}
    bad = embedded_client.put(f"/v1/models/{m['id']}/samples", content=b"not an npz")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_samples"
    job = run_job(embedded_client, m["id"], "onnx", benchmark=False, options={"opset": 17})
    art = embedded_client.get(f"/v1/artifacts/{job['artifact_id']}").json()
    assert art["validation"]["report"]["input_sets"][0]["label"] == "samples"
    assert art["benchmark"] is None
    r = embedded_client.post(f"/v1/artifacts/{art['id']}/benchmarks",
                             json={"batch_sizes": [1, 2], "threads": 1, "max_seconds": 2})
    assert r.status_code == 202
    job = embedded_client.get(f"/v1/jobs/{r.json()['id']}", params={"wait": 120}).json()
    assert job["status"] == "succeeded", job
    listed = embedded_client.get(f"/v1/artifacts/{art['id']}/benchmarks").json()["items"]
    assert len(listed) == 1 and listed[0]["results"]["runner"]["threads"] == 1
    assert sorted(listed[0]["results"]["batches"]) == ["1", "2"]


def test_report_and_report_all(embedded_client, pt2):
    m = upload(embedded_client, pt2)
    r = embedded_client.post(f"/v1/models/{m['id']}/report-all", json={"benchmark": FAST_BENCH})
    assert r.status_code == 202
    jobs = r.json()["jobs"]
    targets = sorted((j["target"], j["options"].get("precision", "")) for j in jobs)
    assert ("onnx", "") in targets and ("openvino", "") in targets and ("openvino", "int8") in targets
    assert ("onnx", "fp16") in targets and ("torchscript", "") in targets
    # no worker here has the TF toolchain, none runs macOS, none has an NVIDIA GPU: TFLite, Core ML and TensorRT
    # (fp32 and its fp16 variant) are left out, saying why, instead of jobs that wait forever
    left = sorted((k["target"], k["options"].get("precision", "")) for k in r.json()["skipped"])
    assert left == [("coreml", ""), ("tensorrt", ""), ("tensorrt", "fp16"), ("tflite", "")]
    skipped = {k["target"]: k for k in r.json()["skipped"]}
    assert "cpu.tf" in skipped["tflite"]["reason"] and "apple" in skipped["coreml"]["reason"]
    assert "gpu" in skipped["tensorrt"]["reason"]
    for j in jobs:
        done = embedded_client.get(f"/v1/jobs/{j['id']}", params={"wait": 600}).json()
        assert done["status"] == "succeeded", done
    report = embedded_client.get(f"/v1/models/{m['id']}/report").json()
    rows = report["rows"]
    assert len(rows) >= len(jobs)
    for row in rows:  # every artifact: a verdict and a measurement; fp32 ones proven
        assert row["validation"] == "passed" or (row["validation"] in ("failed", "skipped") and row["validation_reason"])
        assert row["validation"] == "passed" or row["precision"] != "fp32", row
        assert row["benchmark_status"] == "ok" and row["p50_ms"] is not None
    by_key = {rec["key"]: rec for rec in report["recommendations"]}
    assert set(by_key) == {"speed_cpu", "speed_loading", "file_size", "portability", "security"}
    speed = by_key["speed_cpu"]
    fastest = min((r for r in rows if r["deployable"]), key=lambda r: r["p50_ms"])
    assert speed["choice"]["artifact_id"] == fastest["artifact_id"]
    assert f"{fastest['p50_ms']:.3f} ms" in speed["because"]
    assert by_key["portability"]["choice"]["format"] == "onnx"
    md = embedded_client.get(f"/v1/models/{m['id']}/report", params={"format": "md"})
    assert md.headers["content-type"].startswith("text/markdown")
    assert "| format | precision |" in md.text and "Speed (inference, CPU)" in md.text


# ------------------------------------------------------------------- known-bad conversions


def _onnx_from(pt2: Path, out: Path, *, batch_dynamic: bool = True) -> Path:
    import torch

    ep = torch.export.load(pt2)
    path = out / "m.onnx"
    kw = {"dynamic_shapes": {"x": {0: torch.export.Dim("batch")}}} if batch_dynamic else {}
    torch.onnx.export(ep.module(), (torch.randn(1 if not batch_dynamic else 2, 8),), str(path), dynamo=True,
                      input_names=["x"], external_data=False, **kw)
    return path


def _runner(fmt: str, path: Path, **kw):
    from app.runners import open_runner

    return open_runner(fmt, path.parent, [path.name], path.name, **kw)


def test_perturbed_weights_fail_with_the_output_named(pt2, tmp_path):
    import onnx
    from onnx import numpy_helper

    from app.pipeline.validation import validate

    path = _onnx_from(pt2, tmp_path)
    model = onnx.load(str(path))
    init = model.graph.initializer[0]
    arr = numpy_helper.to_array(init).copy()
    arr += 0.05
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    onnx.save(model, str(path))
    report = validate(_runner("torch_export", pt2), _runner("onnx", path), profile="fp32")
    assert report["status"] == "failed"
    assert report["worst"]["output"] and report["worst"]["max_abs_err"] > 1e-3


def test_batch_specialised_export_fails_at_the_other_batch(pt2, tmp_path):
    from app.pipeline.validation import validate

    path = _onnx_from(pt2, tmp_path, batch_dynamic=False)
    report = validate(_runner("torch_export", pt2), _runner("onnx", path), profile="fp32")
    assert report["status"] == "failed"
    assert "batch=3" in report["reason"] or "3" in str(report["worst"])


def test_bf16_where_fp32_was_asked_fails(tmp_path):
    import openvino as ov
    import torch

    from app.pipeline.validation import validate

    wide = torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(4)]).eval()
    pt2 = tmp_path / "wide.pt2"
    torch.export.save(torch.export.export(wide, (torch.randn(2, 256),),
                                          dynamic_shapes=({0: torch.export.Dim("batch")},)), pt2)
    ov_dir = tmp_path / "ov"
    ov_dir.mkdir()
    ov.save_model(ov.convert_model(torch.export.load(pt2)), str(ov_dir / "model.xml"), compress_to_fp16=False)
    ref = _runner("torch_export", pt2)
    fp32 = validate(ref, _runner("openvino", ov_dir / "model.xml", precision="fp32"), profile="fp32")
    assert fp32["status"] == "passed", fp32["reason"]
    bf16_runner = _runner("openvino", ov_dir / "model.xml", precision="bf16")
    if bf16_runner.info.precision != "bf16":
        pytest.skip(f"this CPU runs OpenVINO in {bf16_runner.info.precision}, not bf16")
    bf16 = validate(ref, bf16_runner, profile="fp32")
    assert bf16["status"] == "failed" and bf16["worst"]["max_abs_err"] > 1e-3


def test_torch_export_to_tflite_through_the_tf_toolchain(tmp_path, pt2, tf_python):
    """pt2 -> ONNX (main toolchain) -> TFLite (onnx2tf, on the cpu.tf queue under the TF venv's
    interpreter), each artifact validated against the upload; the TFLite answers like the program."""
    import torch
    from ai_edge_litert.interpreter import Interpreter
    from fastapi.testclient import TestClient

    from app.main import create_app
    from tests.helpers import make_settings

    settings = make_settings(tmp_path, toolchains={"tf": tf_python})
    with TestClient(create_app(settings)) as c:
        m = upload(c, pt2)
        r = c.post(f"/v1/models/{m['id']}/conversions", json={"target": "tflite", "benchmark": FAST_BENCH})
        assert r.status_code == 202, r.text
        assert r.json()["plan"] == ["torch_export->onnx", "validate:onnx", "benchmark:onnx", "onnx->tflite",
                                    "validate:tflite", "benchmark:tflite"]
        job = c.get(f"/v1/jobs/{r.json()['id']}", params={"wait": 300}).json()
        assert job["status"] == "succeeded", job
        convert_steps = [s for s in job["steps"] if s["kind"] == "convert"]
        assert [s["queue"] for s in convert_steps] == ["cpu", "cpu.tf"]
        art = c.get(f"/v1/artifacts/{job['artifact_id']}").json()
        assert art["format"] == "tflite" and art["lineage"]["edge"] == "onnx->tflite"
        assert [i["shape"] for i in art["inspection"]["inputs"]] == [[None, 8]]  # dynamic batch kept
        assert art["lineage"]["toolchain"]["name"] == "tf" and art["lineage"]["toolchain"]["onnx2tf"]
        v = art["validation"]
        assert v["status"] == "passed" and v["reference"] == f"model:{m['id']}" and v["max_abs_err"] < 1e-4, v
        assert art["benchmark"]["status"] == "ok" and art["benchmark"]["p50_ms"] > 0
        data = c.get(f"/v1/artifacts/{art['id']}/download").content
    (tmp_path / "m.tflite").write_bytes(data)
    it = Interpreter(model_path=str(tmp_path / "m.tflite"))
    x = np.random.default_rng(5).standard_normal((3, 8)).astype(np.float32)
    d = it.get_input_details()[0]
    it.resize_tensor_input(d["index"], list(x.shape))
    it.allocate_tensors()
    it.set_tensor(d["index"], x)
    it.invoke()
    got = it.get_tensor(it.get_output_details()[0]["index"])
    want = torch.export.load(pt2).module()(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_tflite_waits_for_a_worker_with_the_tf_toolchain(embedded_client, pt2):
    m = upload(embedded_client, pt2)
    r = embedded_client.post(f"/v1/models/{m['id']}/conversions", json={"target": "tflite", "benchmark": False})
    assert r.status_code == 202, r.text
    job = r.json()
    for _ in range(120):  # the first (main toolchain) step runs; the TFLite step then has no worker here
        job = embedded_client.get(f"/v1/jobs/{job['id']}").json()
        if job["status"] in ("waiting_for_hardware", "failed", "succeeded"):
            break
        import time

        time.sleep(0.5)
    assert job["status"] == "waiting_for_hardware", job
    waiting = [s for s in job["steps"] if s["status"] == "waiting_for_hardware"]
    assert [s["queue"] for s in waiting] == ["cpu.tf"], job["steps"]
