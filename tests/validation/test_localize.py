"""app.pipeline.localize.first_divergence on real models: ONNX graphs built here with onnx.helper, their
fp16 conversion (the converter the fp16 edge uses), a dynamic-int8 quantisation and an OpenVINO IR of a
tampered copy, all run for real on ONNX Runtime / OpenVINO."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from app.pipeline.localize import first_divergence

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, numpy_helper  # noqa: E402
from onnx import helper as oh  # noqa: E402


def _save(model, directory: Path, name: str = "model.onnx", external: bool = False) -> dict:
    directory.mkdir(parents=True, exist_ok=True)
    if external:  # onnx.save moves the data out of the proto it is given: save a copy
        model = onnx.ModelProto.FromString(model.SerializeToString())
        onnx.save(model, str(directory / name), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=name + ".data", size_threshold=0)
        paths = [name, name + ".data"]
    else:
        onnx.save(model, str(directory / name))
        paths = [name]
    return {"format": "onnx", "root": str(directory), "paths": paths, "primary": name}


def _overflow_model(k2: float = 1e3, width: int = 16):
    """x -> mm (MatMul) -> scaled1 (Mul 1e3) -> [side: Relu(mm) -> aux] -> scaled2 (Mul k2) -> floored
    (Max) -> mean (ReduceMean) -> down1, y (Div 1e3). With k2 = 1e3, |scaled2| reaches ~1e6: inf in
    float16.

    On an x86 CPU, ONNX Runtime has no float16 kernels for MatMul/Mul/ReduceMean/Div: it runs such an
    island of nodes in float32 and casts only at its borders. Max is on the fp16 converter's block list
    (kept float32 between Casts), so scaled2 crosses a border: it is really stored as float16 there, and
    the overflow reaches the output."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((8, width)) * 0.5).astype(np.float32)
    inits = [numpy_helper.from_array(w, "W"),
             numpy_helper.from_array(np.array(1e3, np.float32), "k1"),
             numpy_helper.from_array(np.array(k2, np.float32), "k2"),
             numpy_helper.from_array(np.array(1e3, np.float32), "k3"),
             numpy_helper.from_array(np.array([-1], np.int64), "axes"),
             numpy_helper.from_array(np.array(-1e9, np.float32), "floor")]
    nodes = [
        oh.make_node("MatMul", ["x", "W"], ["mm"], name="matmul"),
        oh.make_node("Mul", ["mm", "k1"], ["scaled1"], name="scale1"),
        oh.make_node("Relu", ["mm"], ["side"], name="side_relu"),  # later in order, not upstream of scaled2
        oh.make_node("ReduceSum", ["side", "axes"], ["aux"], name="side_sum", keepdims=1),
        oh.make_node("Mul", ["scaled1", "k2"], ["scaled2"], name="scale2"),
        oh.make_node("Clip", ["scaled2", "floor"], ["floored"], name="floor"),
        oh.make_node("ReduceMean", ["floored"], ["mean"], name="mean", axes=[-1], keepdims=1),
        oh.make_node("Div", ["mean", "k3"], ["down1"], name="down1"),
        oh.make_node("Div", ["down1", "k3"], ["y"], name="down2"),
    ]
    graph = oh.make_graph(nodes, "overflow", [oh.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, [2, 1]),
                           oh.make_tensor_value_info("aux", TensorProto.FLOAT, [2, 1])], inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def _fp16(model):
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(model, keep_io_types=True)


def _feeds():
    return {"x": np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)}


def _check_json(result: dict) -> None:
    json.dumps(result, allow_nan=False)
    assert set(result) >= {"status", "reason", "compared", "first", "last_matching", "seconds"}


# ---------------------------------------------------------------------------------------- ONNX fp16


def test_fp16_overflow_is_localized_to_the_mul_that_overflows(tmp_path):
    model = _overflow_model()
    ref = _save(model, tmp_path / "ref")
    cand = _save(_fp16(model), tmp_path / "cand")
    res = first_divergence(ref, cand, _feeds(), profile="fp16")
    _check_json(res)
    assert res["status"] == "found", res
    first = res["first"]
    assert (first["tensor"], first["op_type"], first["node"]) == ("scaled2", "Mul", "scale2")
    assert first["candidate_range"][1] == "inf" or first["candidate_range"][0] == "-inf"
    assert first["min_atol_to_pass"] is None  # no atol passes an overflow
    assert all(isinstance(v, float) for v in first["reference_range"])
    # 'side' comes later in the graph and matches, but it is not upstream of scaled2
    assert res["last_matching"] == {"tensor": "scaled1", "op_type": "Mul", "node": "scale1"}
    # mm, scaled1, side, aux match; scaled2 diverges, and so do floored, mean and down1 downstream of it,
    # which confirms the divergence propagates (it is no renamed or harmless tensor); y is not needed
    assert res["compared"] == 8
    assert res["transient"] == []
    assert "scaled2" in res["reason"] and "scaled1" in res["reason"]


def test_a_good_fp16_conversion_has_no_divergence(tmp_path):
    model = _overflow_model(k2=1.0)
    res = first_divergence(_save(model, tmp_path / "ref"), _save(_fp16(model), tmp_path / "cand"), _feeds(),
                           profile="fp16")
    _check_json(res)
    assert res["status"] == "not_found", res
    assert res["first"] is None and res["last_matching"] is None
    assert res["compared"] == 9  # every node output of the reference, same names in the fp16 graph
    assert res["transient"] == []
    assert res["reason"].startswith("all 9 compared tensor(s) are within profile fp16")


def test_external_data_and_a_small_max_tensors_still_find_the_exact_tensor(tmp_path):
    model = _overflow_model(width=256)  # W: 8 KiB (fp32) / 4 KiB (fp16) read from the data files
    ref = _save(model, tmp_path / "ref", external=True)
    cand = _save(_fp16(model), tmp_path / "cand", external=True)
    # only 2 tensors exposed per run: sampled, then the gap searched again
    res = first_divergence(ref, cand, _feeds(), profile="fp16", max_tensors=2)
    _check_json(res)
    assert res["status"] == "found", res
    assert res["first"]["tensor"] == "scaled2"
    assert res["last_matching"]["tensor"] == "scaled1"
    assert any("instrumented runs" in n for n in res["notes"])
    assert sorted(p.name for p in (tmp_path / "ref").iterdir()) == ["model.onnx", "model.onnx.data"]  # untouched


def test_int8_dynamic_quantisation_is_judged_by_cosine(tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = _overflow_model(k2=1.0)
    ref = _save(model, tmp_path / "ref")
    (tmp_path / "cand").mkdir()
    quantize_dynamic(ref["root"] + "/model.onnx", str(tmp_path / "cand" / "model.onnx"), weight_type=QuantType.QInt8)
    cand = {"format": "onnx", "root": str(tmp_path / "cand"), "paths": ["model.onnx"], "primary": "model.onnx"}
    res = first_divergence(ref, cand, _feeds(), profile="int8")
    _check_json(res)
    assert res["status"] == "not_found", res
    assert res["compared"] >= 5  # the quantised MatMul's output keeps its name "mm"
    # the same int8 model under fp16 tolerances: the quantised MatMul is the first to diverge
    res = first_divergence(ref, cand, _feeds(), profile="fp16", overrides={"atol_scale": 0.0, "rtol": 1e-4})
    assert res["status"] == "found" and res["first"]["tensor"] == "mm", res


# -------------------------------------------------------------------------------------- OpenVINO


def _conv_model(w2_scale: float = 1.0):
    """x -> c1 (Conv + bias) -> r1 (Relu) -> dw (depthwise Conv) -> bn (BatchNormalization) -> rb (Relu)
    -> c2 (Conv, weight W2) -> r2 (Relu) -> gap -> flat -> logits.

    OpenVINO folds bn's scale into the depthwise weights and keeps the name "dw" on the fused
    convolution: a tensor of that name exists in the IR but holds dw * scale."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32), "W1"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32) * 0.1, "B1"),
             numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "Wdw"),
             numpy_helper.from_array((rng.random(4) + 0.5).astype(np.float32), "bn_scale"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "bn_bias"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32) * 0.1, "bn_mean"),
             numpy_helper.from_array((rng.random(4) + 0.5).astype(np.float32), "bn_var"),
             numpy_helper.from_array((rng.standard_normal((6, 4, 1, 1)) * w2_scale).astype(np.float32), "W2"),
             numpy_helper.from_array(rng.standard_normal((6, 10)).astype(np.float32), "W3")]
    nodes = [oh.make_node("Conv", ["x", "W1", "B1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             oh.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             oh.make_node("Conv", ["r1", "Wdw"], ["dw"], name="dwconv", group=4, pads=[1, 1, 1, 1]),
             oh.make_node("BatchNormalization", ["dw", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["bn"], name="bn"),
             oh.make_node("Relu", ["bn"], ["rb"], name="relu_bn"),
             oh.make_node("Conv", ["rb", "W2"], ["c2"], name="conv2"),
             oh.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             oh.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
             oh.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
             oh.make_node("MatMul", ["flat", "W3"], ["logits"], name="fc")]
    graph = oh.make_graph(nodes, "convnet", [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [oh.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def _to_openvino(model, directory: Path, compress: bool = False) -> dict:
    ov = pytest.importorskip("openvino")
    src = _save(model, directory / "src")
    ov.save_model(ov.convert_model(str(directory / "src" / "model.onnx")), str(directory / "model.xml"),
                  compress_to_fp16=compress)
    return {"format": "openvino", "root": str(directory), "paths": ["model.xml", "model.bin"],
            "primary": "model.xml", "_src": src}


def test_openvino_candidate_with_a_tampered_weight_diverges_at_that_layer(tmp_path):
    ref = _save(_conv_model(), tmp_path / "ref")
    cand = _to_openvino(_conv_model(w2_scale=1.5), tmp_path / "ov")
    feeds = {"x": np.random.default_rng(4).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    res = first_divergence(ref, cand, feeds, profile="fp32")
    _check_json(res)
    assert res["status"] == "found", res
    assert (res["first"]["tensor"], res["first"]["op_type"], res["first"]["node"]) == ("c2", "Conv", "conv2")
    assert res["last_matching"] == {"tensor": "rb", "op_type": "Relu", "node": "relu_bn"}
    # "dw" names the fused (scaled) convolution in the IR: it differs, but bn right after it matches
    assert res["transient"] == ["dw"]
    assert "dw" not in res["reason"]


def test_openvino_fp16_compressed_ir_of_the_same_model_matches(tmp_path):
    ref = _save(_conv_model(), tmp_path / "ref")
    cand = _to_openvino(_conv_model(), tmp_path / "ov", compress=True)
    feeds = {"x": np.random.default_rng(4).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    res = first_divergence(ref, cand, feeds, profile="fp16")
    _check_json(res)
    assert res["status"] == "not_found", res
    assert res["compared"] == 10
    assert res["transient"] == ["dw"]


# --------------------------------------------------------------------------------------- TFLite


def _to_tflite(model, directory: Path, py: str) -> dict:
    """onnx2tf under the TF toolchain, with the ONNX -> TFLite edge's own flags (NCHW input kept)."""
    import os
    import subprocess

    pytest.importorskip("ai_edge_litert")
    src = _save(model, directory / "src")
    code = ("import onnx2tf, sys; onnx2tf.convert(input_onnx_file_path=sys.argv[1], output_folder_path=sys.argv[2], "
            "copy_onnx_input_output_names_to_tflite=True, keep_ncw_or_nchw_or_ncdhw_input_names=['x'], "
            "non_verbose=True)")
    subprocess.run([str(py), "-c", code, str(Path(src["root"]) / "model.onnx"), str(directory)], check=True,
                   capture_output=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
                                                          "CUDA_VISIBLE_DEVICES": ""})
    return {"format": "tflite", "root": str(directory), "paths": ["model_float32.tflite"],
            "primary": "model_float32.tflite"}


def test_tflite_candidate_is_paired_by_value_and_diverges_at_the_tampered_conv(tmp_path, tf_python):
    """onnx2tf names its tensors after TensorFlow ops and writes them NHWC: pairing by value (in
    the channels-last layout) still names the ONNX Conv whose weight was changed, and the model
    converted untouched has no divergence."""
    ref = _save(_conv_model(), tmp_path / "ref")
    feeds = {"x": np.random.default_rng(4).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    res = first_divergence(ref, _to_tflite(_conv_model(w2_scale=1.5), tmp_path / "bad", tf_python), feeds, profile="fp32")
    _check_json(res)
    assert res["status"] == "found", res
    assert (res["first"]["tensor"], res["first"]["op_type"], res["first"]["node"]) == ("c2", "Conv", "conv2")
    assert res["first"]["shape"] == [1, 6, 8, 8]  # the reference's NCHW shape; the TFLite tensor is NHWC
    assert "convolution" in res["first"]["candidate_tensor"]
    assert res["last_matching"] == {"tensor": "rb", "op_type": "Relu", "node": "relu_bn"}
    assert any("paired with reference tensors by value" in n for n in res["notes"])
    good = first_divergence(ref, _to_tflite(_conv_model(), tmp_path / "good", tf_python), feeds, profile="fp32")
    assert good["status"] == "not_found" and good["compared"] >= 8, good
    assert "logits" not in good["transient"]


# ------------------------------------------------------------------------------------- unsupported


@pytest.mark.parametrize(("rf", "cf"), [("tflite", "onnx"), ("openvino", "onnx"), ("torchscript", "onnx")])
def test_unsupported_pairs_say_so(tmp_path, rf, cf):
    ref = {"format": rf, "root": str(tmp_path), "paths": ["m"], "primary": "m"}
    cand = {"format": cf, "root": str(tmp_path), "paths": ["m"], "primary": "m"}
    res = first_divergence(ref, cand, {"x": np.zeros(1, np.float32)}, profile="fp32")
    _check_json(res)
    assert res["status"] == "unsupported"
    assert rf in res["reason"] and cf in res["reason"]
    assert res["first"] is None and res["compared"] == 0


def test_missing_feeds_and_bad_profile(tmp_path):
    model = _overflow_model()
    ref = _save(model, tmp_path / "ref")
    res = first_divergence(ref, ref, {"not_x": np.zeros((2, 8), np.float32)}, profile="fp32")
    assert res["status"] == "unsupported" and "x" in res["reason"]
    with pytest.raises(ValueError):
        first_divergence(ref, ref, _feeds(), profile="nope")


def test_the_time_budget_stops_after_the_first_run(tmp_path):
    model = _overflow_model()
    ref, cand = _save(model, tmp_path / "ref"), _save(_fp16(model), tmp_path / "cand")
    # 2 tensors per run, no time for a second run: the samples (mm, y) bracket the divergence
    res = first_divergence(ref, cand, _feeds(), profile="fp16", max_tensors=2, budget_s=0.0)
    _check_json(res)
    assert res["status"] == "found" and res["compared"] == 2
    assert res["first"]["tensor"] == "y" and res["last_matching"]["tensor"] == "mm"
    assert any("budget" in n for n in res["notes"])


def test_importing_the_module_loads_no_runtime():
    import subprocess
    import sys

    code = ("import sys, app, app.pipeline.localize; "
            "print([m for m in ('onnx', 'onnxruntime', 'openvino', 'torch', 'polygraphy') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"
