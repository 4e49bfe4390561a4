"""The planner and option checks: pure logic over the declared edges."""

from __future__ import annotations

import pytest

from app.conversion import planner, registry
from app.errors import Unprocessable


def names(p):
    return [e.name for e in p.edges]


def test_direct_and_multi_step_routes():
    assert names(planner.plan("torch_export", "onnx")) == ["torch_export->onnx"]
    assert names(planner.plan("torchscript", "openvino")) == ["torchscript->onnx", "onnx->openvino"]
    assert names(planner.plan("onnx", "onnx")) == ["onnx->onnx:transform"]


def test_options_only_the_target_transformation_knows_add_that_step():
    p = planner.plan("torch_export", "onnx", {"precision": "fp16", "opset": 17})
    assert names(p) == ["torch_export->onnx", "onnx->onnx:transform"]
    assert p.options[0] == {"opset": 17}
    assert p.options[1]["precision"] == "fp16" and p.options[1]["optimize"] == "basic"
    assert registry.tolerance(p.edges[1], p.options[1]) == "fp16"


def test_defaults_are_filled_and_never_silently_changed():
    p = planner.plan("onnx", "openvino", {})
    assert p.options == [{"precision": "fp32", "calibration": "none"}]


@pytest.mark.parametrize("source,target,options,code,needle", [
    ("onnx", "caffe", {}, "unknown_target", "convertible targets"),  # nothing converts to Caffe
    ("onnx", "savedmodel", {}, "no_route", "from onnx modelport can reach"),  # a SavedModel only from Keras
    ("onnx", "tensorrt", {"precision": "fp16", "calibration": "samples"}, "invalid_options", "precision=int8 only"),
    ("onnx", "tensorrt", {"min_batch": 8, "max_batch": 4}, "invalid_options", "min_batch <= opt_batch <= max_batch"),
    ("onnx", "tensorrt", {"shapes": {"x": {"min": [4], "opt": [2], "max": [8]}}}, "invalid_options",
     "1 <= min <= opt <= max"),
    ("onnx", "coreml", {}, "no_route", "from onnx modelport can reach"),  # Core ML only from torch.export, TF
    ("pytorch", "onnx", {}, "no_route", "can reach: safetensors"),
    ("onnx", "openvino", {"fp16": True}, "invalid_options", "allowed: calibration, precision"),
    ("onnx", "openvino", {"precision": "fp8"}, "invalid_options", "precision"),
    ("torch_export", "onnx", {"opset": 3}, "invalid_options", "opset"),
])
def test_refusals_name_the_problem(source, target, options, code, needle):
    with pytest.raises(Unprocessable) as e:
        planner.plan(source, target, options)
    assert e.value.code == code and needle in e.value.message


def test_available_queues_break_ties_but_never_lengthen_routes():
    p = planner.plan("torchscript", "openvino", {}, live_queues={"cpu"})
    assert len(p.edges) == 2


def test_every_edge_names_an_importable_implementation_module():
    import importlib.util

    for e in registry.edges():
        module, _, func = e.implementation.partition(":")
        assert importlib.util.find_spec(module) is not None, e.name
        assert func, e.name
