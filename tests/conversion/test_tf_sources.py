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
def test_tensorflow_model_to_tflite_is_proven_against_tensorflow(tf_client, tf_models, name, fmt, outputs):  # noqa: F811
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


def test_keras_with_lambda_bytecode_is_never_loaded(tf_client, tf_models):  # noqa: F811
    m = _upload(tf_client, tf_models, "lambda.h5")
    assert m["inspection"]["safety"]["status"] == "contains_code"
    r = tf_client.post(f"/v1/models/{m['id']}/conversions", json={"target": "tflite", "benchmark": False})
    job = tf_client.get(f"/v1/jobs/{r.json()['id']}", params={"wait": 300}).json()
    assert job["status"] == "failed"
    assert "not converted" in job["error"]["message"] and "bytecode" in job["error"]["message"]
