"""ONNX -> TensorRT engine: the pure-logic flow of app/conversion/edges/tensorrt.py.

TensorRT cannot be installed on these hosts, so the TensorRT calls go to a FAKE ``tensorrt``
module (tests/fake_tensorrt.py) injected into ``sys.modules`` here only; the GPU the build is
recorded against is a stand-in for ``app.host.cuda_device``. Everything around them is real: the
ONNX models (onnx), the runnable-input search and the INT8 Q/DQ calibration (onnxruntime), the
artifact's inspection. What the fake cannot say is whether NVIDIA's TensorRT accepts these calls:
``scripts/gpu-check`` runs the same edge against a real one."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from app import host
from app.conversion.edges import tensorrt as edge
from app.conversion.registry import ToTensorRTOptions
from app.formats import detect_and_inspect
from app.formats.base import ModelFiles
from app.sandbox.io import ConversionError, Source
from tests import fake_tensorrt, models, traps

H200 = {"name": "NVIDIA H200", "compute_capability": "9.0", "driver": "580.159.03", "memory_mib": 143771}


@pytest.fixture
def fake_trt(monkeypatch, tmp_path):
    """Install a fake TensorRT of the given version (default 10.9), on a (stand-in) H200."""

    def install(version: str = "10.9.0.34", **kw):
        m = fake_tensorrt.make(version, **kw)
        monkeypatch.setitem(sys.modules, "tensorrt", m)
        return m

    monkeypatch.setattr(host, "cuda_device", lambda: dict(H200))
    monkeypatch.setenv(edge.CACHE_ENV, str(tmp_path / "cache"))
    return install


def _src(path):
    return Source(root=path.parent, paths=[path.name], primary=path.name, format="onnx", inspection={})


def _build(tmp_path, path, options, name="out"):
    out = tmp_path / name
    out.mkdir()
    return edge.from_onnx(_src(path), out, options), out


# ----------------------------------------------------------------------------- flags


@pytest.mark.parametrize("version,net,builder,precision,tf32,want", [
    # TensorRT 10: explicit batch is the only mode (the flag is ignored), FP16 is a builder flag, TF32 is cleared
    ("10.9.0", {"EXPLICIT_BATCH", "STRONGLY_TYPED"}, {"FP16", "INT8", "TF32"}, "fp32", False,
     ([], [], ["TF32"], False, "weakly typed")),
    ("10.9.0", {"EXPLICIT_BATCH", "STRONGLY_TYPED"}, {"FP16", "INT8", "TF32"}, "fp16", False,
     ([], ["FP16"], ["TF32"], False, "weakly typed")),
    # explicit quantization: strongly typed, no precision flag
    ("10.9.0", {"EXPLICIT_BATCH", "STRONGLY_TYPED"}, {"FP16", "INT8", "TF32"}, "int8", False,
     (["STRONGLY_TYPED"], [], ["TF32"], False, "strongly typed")),
    # TensorRT 11 dropped FP16/INT8: fp16 comes from a float16 graph
    ("11.0.0", {"STRONGLY_TYPED"}, {"TF32"}, "fp16", False, (["STRONGLY_TYPED"], [], ["TF32"], True, "strongly typed")),
    ("11.0.0", set(), {"TF32"}, "int8", True, ([], [], [], False, "strongly typed")),
    # TensorRT 8.6: EXPLICIT_BATCH is needed, Q/DQ networks need the INT8 flag
    ("8.6.1", {"EXPLICIT_BATCH"}, {"FP16", "INT8", "TF32"}, "int8", False,
     (["EXPLICIT_BATCH"], ["INT8"], ["TF32"], False, "weakly typed")),
    ("8.6.1", {"EXPLICIT_BATCH"}, {"FP16", "INT8", "TF32"}, "fp32", True, (["EXPLICIT_BATCH"], [], [], False,
                                                                            "weakly typed")),
])
def test_flags_follow_each_tensorrt_version(version, net, builder, precision, tf32, want):
    f = edge.choose_flags(version, net, builder, precision, tf32=tf32)
    assert (f.network, f.set, f.clear, f.fp16_onnx, f.typing) == want


# ----------------------------------------------------------------------------- profiles


def _opts(**kw):
    return ToTensorRTOptions(**kw)


def test_profile_batch_and_found_sizes():
    inputs = [edge.InputInfo("images", [-1, 3, -1, -1], ["batch", 3, "height", "width"], 0),
              edge.InputInfo("scale", [1], [1], 1)]
    prof, notes = edge.profile_shapes(inputs, _opts(opt_batch=4, max_batch=16), {"height": 224, "width": 320}, 32)
    assert prof == {"images": ([1, 3, 128, 160], [4, 3, 224, 320], [16, 3, 448, 640])}  # min: opt/2 up to x32
    assert notes == ["height: opt 224 (the size the model was found to run on)",
                     "width: opt 320 (the size the model was found to run on)"]


def test_profile_without_a_found_size_says_so_and_explicit_shapes_win():
    inputs = [edge.InputInfo("ids", [1, -1], [1, None], 0), edge.InputInfo("x", [-1, 8], ["n", 8], 1)]
    prof, notes = edge.profile_shapes(inputs, _opts(shapes={"x": {"min": [2, 8], "opt": [4, 8], "max": [64, 8]}}), {})
    assert prof == {"ids": ([1, 8], [1, 16], [1, 32]), "x": ([2, 8], [4, 8], [64, 8])}
    assert notes[0].startswith("ids[1]: opt 16 (the input generator's default: no runnable size was found")
    with pytest.raises(ConversionError, match=r"shapes\['x'\] changes dim 1, which the model fixes at 8"):
        edge.profile_shapes(inputs, _opts(shapes={"x": {"min": [1, 4], "opt": [1, 8], "max": [1, 8]}}), {})
    with pytest.raises(ConversionError, match="shapes names input\\(s\\) y, which the model does not take"):
        edge.profile_shapes(inputs, _opts(shapes={"y": {"min": [1], "opt": [1], "max": [1]}}), {})


# ----------------------------------------------------------------------------- the build, on the fake


def test_fp32_engine_records_its_gpu_version_flags_and_profile(fake_trt, tmp_path):
    trt = fake_trt("10.9.0.34")
    [onnx_path] = models.onnx_model(tmp_path)
    result, out = _build(tmp_path, onnx_path, {})
    assert result.primary == "model.engine"
    assert sorted(p.name for p in out.iterdir()) == ["model.engine", "model.engine.json"]  # no work files left
    b = fake_tensorrt.built(trt)
    assert b["flags"] == [] and not b["strongly_typed"]  # TF32 cleared, nothing set
    assert b["profile"] == {"x": [[1, 8], [1, 8], [32, 8]]}
    record = json.loads((out / "model.engine.json").read_text())
    assert record["kind"] == "modelport.tensorrt-engine/1" and record["tensorrt_version"] == "10.9.0.34"
    assert record["gpu"] == H200 and record["hardware_compatibility"] == "none"
    assert record["profile"] == {"x": {"min": [1, 8], "opt": [1, 8], "max": [32, 8]}}
    assert record["io"] == {"inputs": [{"name": "x", "dtype": "float32", "shape": [None, 8]}],
                            "outputs": [{"name": "y", "dtype": "float32", "shape": [None, 3]}]}
    assert result.versions["tensorrt"] == "10.9.0.34"
    # the artifact reads back as a TensorRT engine, its record in the inspection
    insp = detect_and_inspect(ModelFiles(out, ["model.engine", "model.engine.json"], "model.engine"))
    assert insp["format"] == "tensorrt" and insp["versions"]["tensorrt_built_with"] == "10.9.0"
    assert insp["details"]["built_for"] == {**H200, "tensorrt": "10.9.0.34"}
    assert [i["name"] for i in insp["inputs"]] == ["x"]


def test_dynamic_image_dims_are_tuned_for_the_size_the_model_runs_on(fake_trt, tmp_path):
    """A stride-32 detector runs on 224x224 (found by the runnable-input search on ONNX Runtime):
    the profile is tuned there: min half of it rounded up to a multiple of 32 (128), max twice it."""
    trt = fake_trt()
    path = traps.stride32_detector(tmp_path / "det.onnx")
    result, _ = _build(tmp_path, path, {"max_batch": 8})
    assert fake_tensorrt.built(trt)["profile"] == {"images": [[1, 3, 128, 128], [1, 3, 224, 224], [8, 3, 448, 448]]}
    assert result.details["profile_notes"] == ["height: opt 224 (the size the model was found to run on)",
                                               "width: opt 224 (the size the model was found to run on)"]


def test_the_timing_cache_is_saved_then_loaded(fake_trt, tmp_path):
    fake_trt()
    [onnx_path] = models.onnx_model(tmp_path)
    _build(tmp_path, onnx_path, {}, "a")
    cache = edge.cache_path(H200, "10.9.0.34", tmp_path / "cache")
    assert cache.name == "timing-nvidia-h200-sm90-trt10-9-0-34.cache" and cache.read_bytes() == b"+entry"
    _, out = _build(tmp_path, onnx_path, {}, "b")
    rec = json.loads((out / "model.engine.json").read_text())["timing_cache"]
    assert rec["used"] and rec["loaded_bytes"] == len(b"+entry") and rec["saved_bytes"] == len(b"+entry+entry")
    cache.write_bytes(b"corrupt")  # TensorRT refuses it: an empty cache, said so
    result, _ = _build(tmp_path, onnx_path, {}, "c")
    assert any("was refused by TensorRT: starting an empty one" in w for w in result.warnings)
    _, out = _build(tmp_path, onnx_path, {"timing_cache": False}, "d")
    assert json.loads((out / "model.engine.json").read_text())["timing_cache"] == {"used": False}


def test_fp16_is_a_builder_flag_on_tensorrt_10(fake_trt, tmp_path):
    trt = fake_trt("10.9.0.34")
    [onnx_path] = models.onnx_model(tmp_path)
    result, _ = _build(tmp_path, onnx_path, {"precision": "fp16"})
    b = fake_tensorrt.built(trt)
    assert b["flags"] == ["FP16"] and not b["strongly_typed"] and b["initializer_types"] == [1]
    assert any(w.startswith("fp16:") for w in result.warnings)


def test_fp16_on_tensorrt_11_builds_a_float16_graph_strongly_typed(fake_trt, tmp_path):
    trt = fake_trt("11.0.0.1")
    [onnx_path] = models.onnx_model(tmp_path)
    result, out = _build(tmp_path, onnx_path, {"precision": "fp16"})
    b = fake_tensorrt.built(trt)
    assert b["strongly_typed"] and b["flags"] == []
    assert 10 in b["initializer_types"]  # FLOAT16 weights: the graph carries the precision
    assert b["inputs"] == [["x", [-1, 8], 0]]  # float32 inputs kept
    assert "float16 ONNX" in " ".join(result.details["steps"])
    assert json.loads((out / "model.engine.json").read_text())["flags"]["fp16_onnx"] is True


def test_int8_calibrated_on_the_samples_builds_a_qdq_graph_strongly_typed(fake_trt, tmp_path):
    trt = fake_trt()
    [onnx_path] = models.onnx_model(tmp_path)
    samples = tmp_path / "samples.npz"
    np.savez(samples, x=np.random.default_rng(1).standard_normal((12, 8)).astype(np.float32))
    result, out = _build(tmp_path, onnx_path, {"precision": "int8", "calibration": "samples", "samples": str(samples)})
    b = fake_tensorrt.built(trt)
    assert b["strongly_typed"] and "INT8" not in b["flags"]
    assert b["onnx_ops"].count("QuantizeLinear") >= 2 and "DequantizeLinear" in b["onnx_ops"]
    cal = json.loads((out / "model.engine.json").read_text())["calibration"]
    assert cal["kind"] == "samples" and cal["sets"] == 12 and cal["source"] == "12 uploaded sample row(s)"
    assert "symmetric int8" in cal["method"]
    assert not result.warnings


def test_int8_synthetic_calibration_warns(fake_trt, tmp_path):
    fake_trt()
    [onnx_path] = models.onnx_model(tmp_path)
    result, _ = _build(tmp_path, onnx_path, {"precision": "int8", "calibration": "synthetic"})
    assert any(w.startswith("calibrated on synthetic inputs") for w in result.warnings)


def test_the_qdq_graph_tensorrt_gets_is_symmetric_and_close_to_fp32(tmp_path):
    """The quantization step alone, on real onnxruntime: zero points 0 everywhere (TensorRT's rule)
    and outputs that still agree with fp32 (ONNX Runtime runs Q/DQ graphs too)."""
    import onnx
    import onnxruntime as ort

    [onnx_path] = models.onnx_model(tmp_path)
    samples = tmp_path / "s.npz"
    x = np.random.default_rng(2).standard_normal((16, 8)).astype(np.float32)
    np.savez(samples, x=x)
    qdq, cal = edge._quantize(_src(onnx_path), onnx_path, tmp_path, _opts(precision="int8", calibration="samples"),
                              str(samples), [])
    report = edge.qdq_report(onnx.load(str(qdq)))
    assert report["quantize"] >= 2 and report["problems"] == []
    run = {p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (onnx_path, qdq)}
    ref, got = (run[p].run(None, {"x": x})[0] for p in (onnx_path, qdq))
    cos = float((ref * got).sum() / np.linalg.norm(ref) / np.linalg.norm(got))
    assert cos > 0.99, cos


def test_int8_without_calibration_needs_a_quantized_onnx(fake_trt, tmp_path):
    fake_trt()
    [onnx_path] = models.onnx_model(tmp_path)
    with pytest.raises(ConversionError, match="precision=int8 needs calibration=samples or calibration=synthetic"):
        _build(tmp_path, onnx_path, {"precision": "int8"})


def test_int8_from_a_qdq_onnx(fake_trt, tmp_path):
    """An ONNX already quantized: symmetric int8 Q/DQ is built as it is; the ONNX static INT8 edge's
    asymmetric output is refused with the zero point named (TensorRT takes 0 only)."""
    from app.conversion.edges import onnx_opt

    trt = fake_trt()
    [onnx_path] = models.onnx_model(tmp_path)
    qdq, _ = edge._quantize(_src(onnx_path), onnx_path, tmp_path, _opts(precision="int8", calibration="synthetic"),
                            None, [])
    result, _ = _build(tmp_path, qdq, {"precision": "int8"})
    assert "explicit quantization from the source's" in result.details["steps"][0]
    assert "QuantizeLinear" in fake_tensorrt.built(trt)["onnx_ops"]
    asym_dir = tmp_path / "asym"
    asym_dir.mkdir()
    onnx_opt.transform(_src(onnx_path), asym_dir, {"precision": "int8", "calibration": "synthetic", "optimize": "none"})
    report = edge.qdq_report(__import__("onnx").load(str(asym_dir / "model.onnx")))
    assert report["problems"], "the ONNX static INT8 edge quantizes activations asymmetrically"
    with pytest.raises(ConversionError, match=r"quantized in a way TensorRT refuses: .*zero point .*TensorRT needs 0"):
        _build(tmp_path, asym_dir / "model.onnx", {"precision": "int8"}, "asym_out")


# ----------------------------------------------------------------------------- failures


def _with_gelu(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Relu", ["x"], ["h"], name="relu_0"),
             helper.make_node("Gelu", ["h"], ["y"], name="/blocks.0/act/Gelu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 9
    path = tmp_path / "gelu.onnx"
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("version,named", [("10.9.0.34", True), ("8.6.1.6", False)])
def test_a_parser_failure_names_the_node_its_operator_and_the_version(fake_trt, tmp_path, version, named):
    """TensorRT 10's parser names the node; an older one gives its index, looked up in the graph."""
    trt = fake_trt(version, strongly_typed=named, node_names_in_errors=named)
    trt.unsupported_ops = {"Gelu"}
    with pytest.raises(ConversionError) as e:
        _build(tmp_path, _with_gelu(tmp_path), {})
    err = e.value
    assert err.message.startswith(f"TensorRT {version}'s ONNX parser failed at node '/blocks.0/act/Gelu' (Gelu): "
                                  "No importer registered for op: Gelu")
    assert err.unsupported_operator == "Gelu" and err.tool == "tensorrt" and err.tool_version == version
    assert f"TensorRT {version} cannot import Gelu" in err.hint


def test_a_failed_build_says_what_tensorrt_logged(fake_trt, tmp_path):
    trt = fake_trt()
    trt.fail_build = "Internal Error: out of GPU memory while timing tactics"
    [onnx_path] = models.onnx_model(tmp_path)
    with pytest.raises(ConversionError, match="TensorRT 10.9.0.34 could not build the engine on NVIDIA H200: Internal "
                                              "Error: out of GPU memory while timing tactics"):
        _build(tmp_path, onnx_path, {"workspace_mib": 64})


def test_no_gpu_and_no_tensorrt_are_refused_clearly(fake_trt, tmp_path, monkeypatch):
    [onnx_path] = models.onnx_model(tmp_path)
    fake_trt()
    monkeypatch.setattr(host, "cuda_device", lambda: None)
    with pytest.raises(ConversionError, match=r"^no CUDA device on this host \(nvidia-smi finds none\)"):
        _build(tmp_path, onnx_path, {}, "a")
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(ConversionError, match="^TensorRT is not installed here"):
        _build(tmp_path, onnx_path, {}, "b")


def test_options_are_checked_before_anything_runs(fake_trt, tmp_path):
    fake_trt()
    [onnx_path] = models.onnx_model(tmp_path)
    with pytest.raises(ConversionError, match="calibration=samples applies to precision=int8 only"):
        _build(tmp_path, onnx_path, {"calibration": "samples"})
    with pytest.raises(ConversionError, match="invalid options: bogus: Extra inputs are not permitted"):
        _build(tmp_path, onnx_path, {"bogus": 1}, "b")


def test_parser_failure_without_details_still_names_the_version():
    err = edge.parser_failure([], "10.3.0")
    assert err.message == "TensorRT 10.3.0's ONNX parser refused the model without saying why"
    described = edge.describe_parser_errors([{"code": "ErrorCode.INVALID_NODE", "desc": "bad attr", "node": 1}],
                                            [("a", "Relu"), ("b", "Conv")])
    assert described == [{"code": "ErrorCode.INVALID_NODE", "desc": "bad attr", "node": 1, "node_name": "b",
                          "node_operator": "Conv"}]
    err = edge.parser_failure(described, "10.3.0")
    assert err.message == "TensorRT 10.3.0's ONNX parser failed at node 'b' (Conv): bad attr"
    assert err.unsupported_operator is None and err.hint is None
