"""TensorFlow SavedModel / Keras -> Core ML, in the coreml-tf toolchain (TensorFlow 2.12 + coremltools,
scripts/setup-coreml-tf-toolchain): converted here from real files TensorFlow 2.19 wrote, the package
inspected like any upload (inputs, outputs, shapes, dtypes, deployment target), every precision variant.
Prediction needs macOS, so the Core ML artifact's validation waits visibly on the apple.coreml-tf queue (a
Mac with that toolchain runs both coremltools and TensorFlow); the Keras route's SavedModel is proven
against the upload here, and the reference side of the Mac's validation (TensorFlow 2.12 running a
SavedModel TensorFlow 2.19 wrote) is compared with TensorFlow 2.19 here."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from app.conversion import registry
from app.formats import detect_and_inspect
from app.formats.base import ModelFiles
from app.sandbox.io import Source
from app.sandbox.parent import SandboxFailure, import_root, run_edge

HERE = Path(__file__).resolve().parent


def _folder_source(folder: Path) -> Source:
    paths = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    insp = detect_and_inspect(ModelFiles(folder, paths, "saved_model.pb"))
    assert insp["format"] == "savedmodel", insp
    return Source(root=folder, paths=paths, primary="saved_model.pb", format="savedmodel", inspection=insp)


def _convert(src: Source, out: Path, options: dict, python: str) -> dict:
    out.mkdir(parents=True)
    return run_edge(registry.by_name("savedmodel->coreml"), src, out, options, python=python, timeout_s=600,
                    memory_mb=16384, log_path=out.parent / "log")


@pytest.mark.parametrize("options", [{}, {"precision": "fp16"}, {"precision": "int8"},
                                     {"precision": "fp16", "palettize_bits": 4, "minimum_deployment_target": "iOS18"}])
def test_savedmodel_to_mlpackage_keeps_the_signature(tmp_path, tf_models, coreml_tf_python, options):
    src = _folder_source(tf_models / "savedmodel")
    result = _convert(src, tmp_path / "out", options, coreml_tf_python)
    assert result["primary"] == "model.mlpackage/Data/com.apple.CoreML/model.mlmodel"
    out = tmp_path / "out"
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    art = detect_and_inspect(ModelFiles(out, files, result["primary"]))
    assert art["format"] == "coreml"
    # the signature's names (not the graph's Identity, Identity_1), its open dims open, float32 I/O at every
    # precision, int64 as int32 (Core ML has no int64)
    assert {i["name"]: (i["dtype"], i["shape"]) for i in art["inputs"]} == {
        "x": ("float32", [None, 8]), "ids": ("int32", [None])}
    assert {o["name"]: (o["dtype"], o["shape"]) for o in art["outputs"]} == {
        "scores": ("float32", [None, 4]), "count": ("int32", [])}
    assert art["versions"]["minimum_deployment_target"] == options.get("minimum_deployment_target", "iOS17")
    d = result["details"]
    assert d["signature"] == "serving_default" and d["written_by_tensorflow"].startswith("2.19")
    assert d["steps"][0].startswith("coremltools.convert (TensorFlow 2.12")
    steps = " ".join(d["steps"])
    assert ("linear_quantize_weights" in steps) == (options.get("precision") == "int8")
    assert ("palettize_weights (4-bit" in steps) == bool(options.get("palettize_bits"))
    assert any("others (embed)" in w for w in result["warnings"]), result["warnings"]
    assert result["versions"]["coremltools"] and result["versions"]["tensorflow-cpu"].startswith("2.12")


def test_a_savedmodel_with_an_op_tensorflow_2_12_lacks_is_refused_naming_both_versions(tmp_path, tf_python,
                                                                                       coreml_tf_python):
    folder = tmp_path / "segment_max"
    proc = subprocess.run([tf_python, str(HERE / "tf_make_newer_op.py"), str(folder)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with pytest.raises(SandboxFailure) as info:
        _convert(_folder_source(folder), tmp_path / "out", {}, coreml_tf_python)
    err = info.value.error
    assert err["unsupported_operator"] == "SegmentMaxV2" and err["tool"] == "tensorflow", err
    assert err["tool_version"].startswith("2.12"), err
    assert "TensorFlow 2.12" in err["message"] and "written by TensorFlow 2.19" in err["message"], err
    assert "supports TensorFlow up to 2.12" in err["message"] and "ONNX" in err["hint"], err


_RUN = """
import json, sys
import numpy as np
from pathlib import Path
from app.runners import open_runner
folder = Path(sys.argv[1])
paths = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
r = open_runner("savedmodel", folder, paths, "saved_model.pb")
rng = np.random.default_rng(0)
outs = r.run({"x": rng.standard_normal((3, 8)).astype("float32"), "ids": np.arange(5, dtype="int64")})
print(json.dumps({"info": r.info.runtime + " " + r.info.version,
                  "outs": {k: np.asarray(v).tolist() for k, v in outs.items()}}))
"""


def test_the_coreml_tf_toolchain_runs_the_reference_as_tensorflow_2_19_does(tf_models, tf_python, coreml_tf_python):
    """On a Mac, the Core ML artifact of a SavedModel is validated in the coreml-tf toolchain, whose TensorFlow
    2.12 runs the SavedModel as the reference: here it must give what TensorFlow 2.19 gives."""
    got = {}
    for name, py in (("tf", tf_python), ("coreml-tf", coreml_tf_python)):
        env = {**os.environ, "PYTHONPATH": str(import_root(py)), "TF_CPP_MIN_LOG_LEVEL": "3",
               "CUDA_VISIBLE_DEVICES": ""}
        proc = subprocess.run([py, "-c", _RUN, str(tf_models / "savedmodel")], capture_output=True, text=True,
                              timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        got[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["tf"]["info"].startswith("tensorflow 2.19") and got["coreml-tf"]["info"].startswith("tensorflow 2.12")
    import numpy as np

    a, b = got["tf"]["outs"], got["coreml-tf"]["outs"]
    assert set(a) == set(b) == {"scores", "count"}
    assert b["count"] == a["count"] == 5
    np.testing.assert_allclose(np.array(b["scores"]), np.array(a["scores"]), rtol=1e-6, atol=1e-6)


@pytest.fixture
def coreml_tf_client(tmp_path, tf_python, coreml_tf_python):
    from fastapi.testclient import TestClient

    from app.main import create_app
    from tests.helpers import make_settings

    settings = make_settings(tmp_path, toolchains={"tf": tf_python, "coreml-tf": coreml_tf_python})
    with TestClient(create_app(settings)) as c:
        yield c


def _upload(client, path: Path) -> dict:
    if path.is_dir():
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            tar.add(path, arcname=path.name)
        body, name, ctype = buf.getvalue(), f"{path.name}.tar.gz", "application/gzip"
    else:
        body, name, ctype = path.read_bytes(), path.name, "application/octet-stream"
    r = client.post("/v1/models", params={"filename": name}, content=body, headers={"Content-Type": ctype})
    assert r.status_code == 201, r.text
    return r.json()


def _wait_for_hardware(client, job_id: str) -> dict:
    end = time.monotonic() + 600
    job = client.get(f"/v1/jobs/{job_id}", params={"wait": 1}).json()
    while job["status"] not in ("waiting_for_hardware", "failed", "succeeded"):
        assert time.monotonic() < end, job
        job = client.get(f"/v1/jobs/{job_id}", params={"wait": 5}).json()
    return job


@pytest.mark.parametrize("name,outputs", [
    ("functional.keras", {"output_0": [None, 10], "output_1": [None, 1]}),
    ("functional.h5", {"logits": [None, 10], "aux": [None, 1]}),
])
def test_keras_reaches_core_ml_through_a_proven_savedmodel_and_waits_for_a_mac(coreml_tf_client, tf_models, name,
                                                                               outputs):
    c = coreml_tf_client
    m = _upload(c, tf_models / name)
    assert m["format"] == "keras"
    r = c.post(f"/v1/models/{m['id']}/conversions",
               json={"target": "coreml", "options": {"precision": "fp16"}, "benchmark": False})
    assert r.status_code == 202, r.text
    assert [(s["kind"], s["edge"], s["queue"]) for s in r.json()["steps"]] == [
        ("convert", "keras->savedmodel", "cpu.tf"), ("validate", "validate:savedmodel", "cpu.tf"),
        ("convert", "savedmodel->coreml", "cpu.coreml-tf"), ("validate", "validate:coreml", "apple.coreml-tf")]
    job = _wait_for_hardware(c, r.json()["id"])
    assert job["status"] == "waiting_for_hardware", job
    assert [s["status"] for s in job["steps"]] == ["succeeded"] * 3 + ["waiting_for_hardware"]
    sm_id, cm_id = job["artifact_ids"]
    sm = c.get(f"/v1/artifacts/{sm_id}").json()
    v = sm["validation"]  # the SavedModel against the Keras upload, both on TensorFlow 2.19
    assert sm["format"] == "savedmodel" and v["status"] == "passed" and v["reference"] == f"model:{m['id']}", v
    assert v["max_abs_err"] is not None and v["max_abs_err"] < 1e-5, v
    assert {e["output"] for e in v["report"]["outputs"]} == set(outputs)
    cm = c.get(f"/v1/artifacts/{cm_id}").json()
    assert cm["format"] == "coreml" and cm["lineage"]["edge"] == "savedmodel->coreml"
    assert {o["name"]: o["shape"] for o in cm["inspection"]["outputs"]} == outputs
    assert {i["name"]: i["shape"] for i in cm["inspection"]["inputs"]} == {"image": [None, 8, 8, 3], "meta": [None, 5]}
    assert cm["lineage"]["toolchain"]["name"] == "coreml-tf" and cm["lineage"]["options"]["precision"] == "fp16"


def test_savedmodel_upload_to_core_ml_waits_for_a_mac_with_the_coreml_tf_toolchain(coreml_tf_client, tf_models):
    c = coreml_tf_client
    m = _upload(c, tf_models / "savedmodel")
    r = c.post(f"/v1/models/{m['id']}/conversions", json={"target": "coreml", "benchmark": False})
    assert r.status_code == 202, r.text
    assert [(s["kind"], s["queue"]) for s in r.json()["steps"]] == [("convert", "cpu.coreml-tf"),
                                                                     ("validate", "apple.coreml-tf")]
    job = _wait_for_hardware(c, r.json()["id"])
    assert job["status"] == "waiting_for_hardware", job
    art = c.get(f"/v1/artifacts/{job['artifact_ids'][0]}").json()
    assert art["format"] == "coreml" and art["inspection"]["versions"]["minimum_deployment_target"] == "iOS17"
    assert any("written by TensorFlow 2.19" in w for w in art["warnings"]), art["warnings"]
