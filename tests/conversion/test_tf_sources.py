"""TensorFlow models in: SavedModel and Keras (Keras 3 .keras, tf_keras .h5) -> TFLite, through the
API with the TF toolchain. Each conversion runs on the cpu.tf queue; so does its validation, which
needs TensorFlow to run the uploaded model as the reference (app/runners/tensorflow_runner.py) and
compares it with the TFLite file on LiteRT, output by output, by name. The models are real files
written by TensorFlow (tests/formats/tf_make_models.py)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest


def _upload(client, models_dir: Path, name: str) -> dict:
    path = models_dir / name
    if path.is_dir():  # a SavedModel folder goes up as a tar archive
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            tar.add(path, arcname=name)
        r = client.post("/v1/models", params={"filename": f"{name}.tar.gz"}, content=buf.getvalue(),
                        headers={"Content-Type": "application/gzip"})
    else:
        r = client.post("/v1/models", params={"filename": name}, content=path.read_bytes(),
                        headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    return r.json()


@pytest.fixture
def tf_client(tmp_path, tf_python):
    from fastapi.testclient import TestClient

    from app.main import create_app
    from tests.helpers import make_settings

    with TestClient(create_app(make_settings(tmp_path, toolchains={"tf": tf_python}))) as c:
        yield c


@pytest.mark.parametrize("name,fmt,outputs", [
    ("functional.keras", "keras", {"output_0": [None, 10], "output_1": [None, 1]}),
    ("functional.h5", "keras", {"logits": [None, 10], "aux": [None, 1]}),
    ("savedmodel", "savedmodel", {"scores": [None, 4], "count": []}),
])
def test_tensorflow_model_to_tflite_is_proven_against_tensorflow(tf_client, tf_models, name, fmt, outputs):
    m = _upload(tf_client, tf_models, name)
    assert m["format"] == fmt
    r = tf_client.post(f"/v1/models/{m['id']}/conversions", json={"target": "tflite", "benchmark": False})
    assert r.status_code == 202, r.text
    job = tf_client.get(f"/v1/jobs/{r.json()['id']}", params={"wait": 300}).json()
    assert job["status"] == "succeeded", job
    assert [(s["kind"], s["queue"]) for s in job["steps"]] == [("convert", "cpu.tf"), ("validate", "cpu.tf")]
    art = tf_client.get(f"/v1/artifacts/{job['artifact_id']}").json()
    assert art["format"] == "tflite" and art["lineage"]["edge"] == f"{fmt}->tflite"
    assert {t["name"]: t["shape"] for t in art["inspection"]["outputs"]} == outputs
    v = art["validation"]
    assert v["status"] == "passed" and v["reference"] == f"model:{m['id']}", v
    assert v["max_abs_err"] is not None and v["max_abs_err"] < 1e-4, v
    entries = v["report"]["outputs"]
    assert {e["output"] for e in entries} == set(outputs), entries  # every output compared ...
    assert all(e["candidate_output"] == e["output"] and e["passed"] for e in entries), entries  # ... by name


def test_keras_with_lambda_bytecode_is_never_loaded(tf_client, tf_models):
    m = _upload(tf_client, tf_models, "lambda.h5")
    assert m["inspection"]["safety"]["status"] == "contains_code"
    r = tf_client.post(f"/v1/models/{m['id']}/conversions", json={"target": "tflite", "benchmark": False})
    job = tf_client.get(f"/v1/jobs/{r.json()['id']}", params={"wait": 300}).json()
    assert job["status"] == "failed"
    assert "not converted" in job["error"]["message"] and "bytecode" in job["error"]["message"]


@pytest.mark.parametrize("name,fmt", [("savedmodel", "savedmodel"), ("functional.keras", "keras"),
                                      ("functional.h5", "keras"), ("dense.tflite", "tflite")])
def test_tensorflow_model_to_onnx_is_proven_against_tensorflow(tf_client, tf_models, name, fmt):
    """tf2onnx in the TF toolchain; the ONNX file is validated against the upload itself (TensorFlow
    under the TF toolchain; a TFLite upload on LiteRT, which the main toolchain has too), output by output."""
    m = _upload(tf_client, tf_models, name)
    assert m["format"] == fmt
    r = tf_client.post(f"/v1/models/{m['id']}/conversions", json={"target": "onnx", "benchmark": False})
    assert r.status_code == 202, r.text
    job = tf_client.get(f"/v1/jobs/{r.json()['id']}", params={"wait": 300}).json()
    assert job["status"] == "succeeded", job
    checks_on = "cpu" if fmt == "tflite" else "cpu.tf"
    assert [(s["kind"], s["queue"]) for s in job["steps"]] == [("convert", "cpu.tf"), ("validate", checks_on)]
    art = tf_client.get(f"/v1/artifacts/{job['artifact_id']}").json()
    assert art["format"] == "onnx" and art["lineage"]["edge"] == f"{fmt}->onnx"
    assert art["lineage"]["toolchain"]["tf2onnx"].startswith("1.17")
    v = art["validation"]
    assert v["status"] == "passed" and v["reference"] == f"model:{m['id']}", v
    assert v["max_abs_err"] is not None and v["max_abs_err"] < 1e-4, v
    ref_outputs = {t["name"] for t in m["inspection"]["outputs"]}
    assert len(v["report"]["outputs"]) >= len(ref_outputs) and all(e["passed"] for e in v["report"]["outputs"])


def test_a_savedmodel_reaches_openvino_through_onnx(tf_client, tf_models):
    """No interpreter has both TensorFlow and OpenVINO: the OpenVINO artifact is proven against the
    ONNX artifact before it (which was proven against TensorFlow), on the intel queue."""
    m = _upload(tf_client, tf_models, "savedmodel")
    r = tf_client.post(f"/v1/models/{m['id']}/conversions", json={"target": "openvino", "benchmark": False})
    assert r.status_code == 202, r.text
    job = tf_client.get(f"/v1/jobs/{r.json()['id']}", params={"wait": 300}).json()
    assert job["status"] == "succeeded", job
    assert [(s["kind"], s["queue"]) for s in job["steps"]] == [
        ("convert", "cpu.tf"), ("validate", "cpu.tf"), ("convert", "intel"), ("validate", "intel")]
    onnx_art, ov_art = (tf_client.get(f"/v1/artifacts/{a}").json() for a in job["artifact_ids"])
    assert onnx_art["validation"]["reference"] == f"model:{m['id']}"
    assert ov_art["validation"]["reference"] == f"artifact:{onnx_art['id']}"
    assert onnx_art["validation"]["status"] == ov_art["validation"]["status"] == "passed", ov_art["validation"]
