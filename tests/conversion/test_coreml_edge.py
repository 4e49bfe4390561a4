"""torch.export -> Core ML: converted here (coremltools runs on Linux), the package inspected like
any upload (inputs, outputs, deployment target), every precision variant; prediction needs macOS,
so validation waits visibly on the apple queue instead of failing or being skipped silently."""

from __future__ import annotations

import sys

import pytest

from app.conversion import registry
from app.formats import detect_and_inspect
from app.formats.base import ModelFiles
from app.sandbox.io import Source
from app.sandbox.parent import run_edge
from tests import models
from tests.helpers import upload

pytest.importorskip("coremltools", reason="coremltools is in the main toolchain (modelport[coreml])")


@pytest.mark.parametrize("options", [{}, {"precision": "fp16"}, {"precision": "int8"},
                                     {"precision": "fp16", "palettize_bits": 4}])
def test_pt2_to_mlpackage_writes_an_inspectable_package(tmp_path, options):
    pt2 = models.exported_program(tmp_path)
    insp = detect_and_inspect(ModelFiles(pt2.parent, [pt2.name], pt2.name))
    src = Source(root=pt2.parent, paths=[pt2.name], primary=pt2.name, format="torch_export", inspection=insp)
    out = tmp_path / "out"
    out.mkdir()
    result = run_edge(registry.by_name("torch_export->coreml"), src, out, options, python=sys.executable,
                      timeout_s=600, memory_mb=16384, log_path=tmp_path / "log")
    assert result["primary"] == "model.mlpackage/Data/com.apple.CoreML/model.mlmodel"
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    art = detect_and_inspect(ModelFiles(out, files, result["primary"]))
    assert art["format"] == "coreml"
    assert [i["name"] for i in art["inputs"]] == result["details"]["inputs"] and art["outputs"]
    steps = " ".join(result["details"]["steps"])
    if options.get("precision") == "int8":
        assert "linear_quantize_weights" in steps
    if options.get("palettize_bits"):
        assert "palettize_weights (4-bit" in steps
    assert result["versions"]["coremltools"]


def test_core_ml_validation_waits_for_a_macos_worker(embedded_client, tmp_path):
    c = embedded_client
    m = upload(c, models.exported_program(tmp_path))
    r = c.post(f"/v1/models/{m['id']}/conversions", json={"target": "coreml", "benchmark": False})
    assert r.status_code == 202, r.text
    assert [(s["kind"], s["queue"]) for s in r.json()["steps"]] == [("convert", "cpu"), ("validate", "apple")]
    deadline_s = 300
    job = c.get(f"/v1/jobs/{r.json()['id']}", params={"wait": 1}).json()
    import time

    end = time.monotonic() + deadline_s
    while job["status"] not in ("waiting_for_hardware", "failed", "succeeded"):
        assert time.monotonic() < end, job
        job = c.get(f"/v1/jobs/{job['id']}", params={"wait": 5}).json()
    assert job["status"] == "waiting_for_hardware", job
    convert, validate = job["steps"]
    assert convert["status"] == "succeeded" and validate["status"] == "waiting_for_hardware"
    art = c.get(f"/v1/artifacts/{job['artifact_ids'][0]}").json()
    assert art["format"] == "coreml" and art["inspection"]["inputs"]
    out = c.post(f"/v1/models/{m['id']}/report-all", json={"benchmark": False}).json()
    assert any(k["target"] == "coreml" and "apple" in k["reason"] for k in out["skipped"]), out["skipped"]
