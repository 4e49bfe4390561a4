"""Edges that fix what validation would otherwise find: onnx2tf gets static shapes the source runs
on; an fp16 transform keeps named nodes in float32 (mixed precision) and refuses an output whose
inputs are not the source's. Each a round trip: convert, run both, compare."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from app.conversion import registry
from app.formats import detect_and_inspect
from app.formats.base import ModelFiles
from app.pipeline.validation import validate
from app.runners import open_runner
from app.sandbox.io import Source
from app.sandbox.parent import SandboxFailure, run_edge
from tests import traps


def _source(path: Path) -> Source:
    insp = detect_and_inspect(ModelFiles(path.parent, [path.name], path.name))
    return Source(root=path.parent, paths=[path.name], primary=path.name, format="onnx", inspection=insp)


def _run(edge: str, src: Source, work: Path, options: dict, python: str = sys.executable) -> tuple[dict, Path]:
    out = work / "out"
    out.mkdir(parents=True)
    result = run_edge(registry.by_name(edge), src, out, options, python=python, timeout_s=600, memory_mb=16384,
                      log_path=work / "convert.log")
    return result, out


def test_dynamic_spatial_onnx_to_tflite_gets_static_sizes_the_source_runs_on(tf_python, tmp_path):
    """Before: onnx2tf failed on the dynamic H/W ("Dimension -1 must be >= 0" on real detectors);
    now H and W are fixed to 224 (a multiple of the graph's stride 32), the batch stays dynamic,
    the warning says so, and the artifact validates against the source at that size."""
    path = traps.stride32_detector(tmp_path / "src" / "det.onnx")
    result, out = _run("onnx->tflite", _source(path), tmp_path / "w", {"precision": "fp32"}, tf_python)
    assert result["details"]["fixed_dims"] == ["images[2]=224", "images[3]=224"]
    (warning,) = [w for w in result["warnings"] if "static shapes" in w]
    assert "images[2]=224" in warning and "multiple of 32" in warning and "batch stays dynamic" in warning
    assert not list(path.parent.glob(".static-*")), "the static copy is removed"
    tfl = open_runner("tflite", out, ["model.tflite"], "model.tflite")
    (spec,) = tfl.inputs()
    assert spec.shape[1:] == [3, 224, 224] and spec.shape[0] in (None, -1, "batch")
    rep = validate(open_runner("onnx", path.parent, [path.name], path.name), tfl, profile="fp32")
    assert rep["status"] == "passed", rep["reason"]
    assert {tuple(s["shapes"]["images"]) for s in rep["input_sets"]} == {(1, 3, 224, 224), (3, 3, 224, 224)}
    assert any("validated at the candidate's sizes" in n for n in rep["notes"])


def test_fp16_overflow_fails_and_mixed_precision_keeping_the_diverging_ops_passes(tmp_path):
    path = traps.fp16_overflow(tmp_path / "src" / "m.onnx")
    src = _source(path)
    ref = open_runner("onnx", path.parent, [path.name], path.name)
    _, plain = _run("onnx->onnx:transform", src, tmp_path / "plain", {"precision": "fp16", "optimize": "none"})
    rep = validate(ref, open_runner("onnx", plain, ["model.onnx"], "model.onnx"), profile="fp16")
    assert rep["status"] == "failed" and "output 'y'" in rep["reason"], rep["reason"]
    result, mixed = _run("onnx->onnx:transform", src, tmp_path / "mixed",
                         {"precision": "fp16", "optimize": "none", "keep_fp32": ["amplify_more", "scale_back"]})
    assert result["details"]["kept_fp32"] == ["amplify_more", "scale_back"]
    rep = validate(ref, open_runner("onnx", mixed, ["model.onnx"], "model.onnx"), profile="fp16")
    assert rep["status"] == "passed", rep["reason"]
    with pytest.raises(SandboxFailure) as ei:
        _run("onnx->onnx:transform", src, tmp_path / "bad", {"precision": "fp16", "keep_fp32": ["no_such_node"]})
    assert "keep_fp32 names node(s) the graph does not have: no_such_node" in ei.value.error["message"]


def test_a_transform_that_adds_graph_inputs_is_refused(tmp_path):
    """What the fp16 pass once did to constant-filled weights: they became graph inputs. The edge's
    own check compares the inputs and refuses, naming them."""
    import onnx
    from onnx import helper

    from app.conversion.edges.onnx_opt import _check_same_inputs
    from app.sandbox.io import ConversionError

    path = traps.fp16_overflow(tmp_path / "m.onnx")
    broken = onnx.load(str(path))
    w = next(t for t in broken.graph.initializer if t.name == "W")
    broken.graph.initializer.remove(w)
    broken.graph.input.append(helper.make_tensor_value_info("W", onnx.TensorProto.FLOAT, [8, 4]))
    _check_same_inputs(path, onnx.load(str(path)))  # the same inputs: fine
    with pytest.raises(ConversionError, match=r"1 new input\(s\) \(W\)"):
        _check_same_inputs(path, broken)


@pytest.mark.parametrize(("target", "calibration"), [("onnx", "samples"), ("onnx", "synthetic"),
                                                      ("openvino", "samples"), ("openvino", "synthetic"),
                                                      ("tflite", "samples"), ("tflite", "synthetic")])
def test_calibrated_static_int8_through_the_api(tmp_path, calibration, target, tf_python):
    """Static INT8 on all three runtimes, calibrated on the uploaded samples (or on generated inputs,
    with a warning): ONNX QDQ, OpenVINO nncf.quantize, TFLite full-integer; validated with the int8
    profile, beside the fp32 artifact's numbers in the report, with the accuracy cost and speed-up."""
    import io

    from fastapi.testclient import TestClient

    from app.main import create_app
    from tests import models
    from tests.helpers import int8_artifact, make_settings, upload

    with TestClient(create_app(make_settings(tmp_path, toolchains={"tf": tf_python}))) as c:
        m = upload(c, models.onnx_classifier(tmp_path))
        body = {"target": target, "benchmark": {"batch_sizes": [1], "max_seconds": 2},
                "options": {"precision": "int8", "calibration": calibration}}
        if calibration == "samples":
            r = c.post(f"/v1/models/{m['id']}/conversions", json=body)
            assert r.status_code == 422 and r.json()["error"]["code"] == "missing_samples", r.text
            name = m["inspection"]["inputs"][0]["name"]
            buf = io.BytesIO()
            np.savez(buf, **{name: np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)})
            assert c.put(f"/v1/models/{m['id']}/samples", content=buf.getvalue()).status_code == 200
        art = int8_artifact(c, m["id"], target, body)
        calib = art["lineage"]["options"]["calibration"]
        assert calib == calibration
        assert art["validation"]["profile"] == "int8" and art["validation"]["status"] == "passed", art["validation"]
        if calibration == "synthetic":
            assert any("calibrated on synthetic inputs" in w for w in art["warnings"])
        else:
            assert not any("synthetic" in w for w in art["warnings"])
        r = c.post(f"/v1/models/{m['id']}/conversions", json={**body, "options": {"precision": "fp16",
                                                                                  "calibration": calibration}})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_options", r.text
        assert f"calibration={calibration} applies to precision=int8 only" in r.json()["error"]["message"]
        rows = c.get(f"/v1/models/{m['id']}/report").json()["rows"]
        row = next(r for r in rows if r["artifact_id"] == art["id"])
        assert row["precision"] == "int8" and row["p50_ms"] is not None and row["validation"] == "passed"
