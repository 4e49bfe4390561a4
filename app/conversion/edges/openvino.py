"""ONNX and torch.export programs to OpenVINO IR (model.xml + model.bin), fp32 / fp16 / INT8 weights."""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path
from typing import Any

from app.conversion.edges._common import fail, parse_options, versions
from app.sandbox.io import ConversionError, Result, Source

_UNSUPPORTED_HINT = ("OpenVINO has no conversion rule for this operator: rewrite that part of the model, register an "
                     "OpenVINO extension for it, or target ONNX Runtime instead")
_FLOAT_TYPES = {"f64", "f32", "f16", "bf16"}


def const_element_types(xml_path: Path) -> Counter:
    """element_type of every Const layer in an IR .xml (what the .bin stores)."""
    from defusedxml.ElementTree import parse

    counts: Counter = Counter()
    for layer in parse(str(xml_path)).getroot().iter("layer"):
        if layer.get("type") == "Const":
            data = layer.find("data")
            if data is not None and data.get("element_type"):
                counts[data.get("element_type")] += 1
    return counts


def _ports(model) -> dict[str, Any]:
    def port(p):
        try:
            name = p.get_any_name()
        except RuntimeError:
            name = None
        return {"name": name, "dtype": p.get_element_type().get_type_name(), "shape": str(p.get_partial_shape())}

    return {"inputs": [port(p) for p in model.inputs], "outputs": [port(p) for p in model.outputs]}


def _save(model, out_dir: Path, precision: str, details: dict[str, Any], warns: list[str],
          calibrate: tuple[list[dict], str] | None = None) -> str:
    import openvino as ov

    if precision == "int8":
        try:
            import nncf
        except ImportError:
            raise ConversionError("INT8 needs NNCF, which is not installed in this toolchain",
                                  tool="nncf", hint="install modelport[openvino] (nncf)") from None
        if calibrate is not None:  # post-training quantisation: activations too, ranges from the calibration sets
            from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

            from app.conversion.edges.onnx_opt import _has_vnni

            sets, where = calibrate
            # without VNNI the u8s8 kernels saturate int16 sums: 7-bit weights everywhere, as reduce_range for ORT
            fix = OverflowFix.FIRST_LAYER if _has_vnni() else OverflowFix.ENABLE
            try:
                model = nncf.quantize(model, nncf.Dataset(sets), subset_size=len(sets),
                                      advanced_parameters=AdvancedQuantizationParameters(overflow_fix=fix))
            except Exception as e:
                raise fail(e, doing="nncf.quantize (post-training INT8 quantisation)", tool="nncf") from None
            details["compression"] = (f"nncf.quantize (INT8 weights and activations, overflow_fix={fix.value}, "
                                      f"calibrated on {where})")
            details["calibration"] = {"sets": len(sets), "source": where}
        else:
            try:
                model = nncf.compress_weights(model)  # INT8_ASYM, per output channel, data-free
            except Exception as e:
                raise fail(e, doing="nncf.compress_weights", tool="nncf") from None
            details["compression"] = "nncf.compress_weights (INT8_ASYM, per-channel, data-free)"
        versions_extra = {"nncf": nncf.__version__}
    else:
        versions_extra = {}
    xml = out_dir / "model.xml"
    # save_model compresses to fp16 by default: fp32 (and int8, whose scales stay as NNCF made them) must not
    ov.save_model(model, str(xml), compress_to_fp16=(precision == "fp16"))
    types = const_element_types(xml)
    details["const_element_types"] = dict(types)
    floats = {t for t in types if t in _FLOAT_TYPES}
    if precision == "fp32" and floats - {"f32"}:
        warns.append(f"some weights are stored as {', '.join(sorted(floats - {'f32'}))}: the source held them so "
                     "(precision=fp32 does not up-cast)")
    if precision == "fp16" and "f16" not in types and floats:
        raise ConversionError("precision=fp16 was asked for but no weight was stored as f16",
                              tool="openvino", tool_version=ov.__version__)
    if precision == "int8" and not {"u8", "i8"} & set(types):
        warns.append("NNCF compressed no weight to INT8 (no MatMul/Conv/Embedding weights large enough?)")
    if calibrate is not None:
        details["fake_quantize_ops"] = sum(1 for op in model.get_ops() if op.get_type_name() == "FakeQuantize")
    details["precision"] = precision
    details.update(_ports(model))
    details["files"] = ["model.xml", "model.bin"]
    details.setdefault("versions_extra", {}).update(versions_extra)
    return xml.name


def _result(xml: str, details: dict[str, Any], warns: list[str], *dists: str) -> Result:
    extra = details.pop("versions_extra", {})
    return Result(primary=xml, details=details, warnings=warns, versions={**versions("openvino", *dists), **extra})


def from_onnx(src: Source, out_dir: Path, options: dict[str, Any]) -> Result:
    """ONNX -> OpenVINO IR with openvino.convert_model."""
    import openvino as ov

    from app.conversion.compat import check_onnx_file_for
    from app.conversion.registry import ToOpenVINOOptions

    opts = parse_options(ToOpenVINOOptions, options)
    warns, info = check_onnx_file_for("openvino", src.primary_path)
    try:
        model = ov.convert_model(str(src.primary_path))
    except Exception as e:
        raise fail(e, doing="openvino.convert_model (ONNX frontend)", tool="openvino",
                   unsupported_hint=_UNSUPPORTED_HINT) from None
    details: dict[str, Any] = {"source_onnx": info}
    calibrate = _calibration_sets(opts, "onnx", src, options, warns)
    xml = _save(model, out_dir, opts.precision, details, warns, calibrate)
    return _result(xml, details, warns, "onnx")


def _calibration_sets(opts, fmt: str, src: Source, options: dict[str, Any], warns: list[str]):
    """The calibration sets of a calibrated INT8 request (None otherwise)."""
    if opts.calibration == "none":
        return None
    from app.conversion.edges import _calibration

    if opts.calibration == "synthetic":
        warns.append(_calibration.SYNTHETIC_WARNING)
    return _calibration.feeds(fmt, src.primary_path.parent, src.primary_path.name, opts.calibration,
                              options.get("samples"))


def from_program(src: Source, out_dir: Path, options: dict[str, Any]) -> Result:
    """torch.export (.pt2) -> OpenVINO IR with openvino.convert_model(ExportedProgram)."""
    import openvino as ov
    import torch

    from app.conversion.edges.torch_onnx import load_program, symbolic_shape, user_inputs
    from app.conversion.registry import ToOpenVINOOptions

    opts = parse_options(ToOpenVINOOptions, options)
    ep = load_program(src)
    inputs = user_inputs(ep)
    warns: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = ov.convert_model(ep)
    except Exception as e:
        raise fail(e, doing="openvino.convert_model (PyTorch frontend)", tool="openvino",
                   unsupported_hint=_UNSUPPORTED_HINT) from None
    # The frontend leaves every dim of an ExportedProgram dynamic: pin the ones the program fixed.
    shapes = {}
    if len(inputs) == len(model.inputs) and all(isinstance(v, torch.Tensor) for _, v in inputs):
        for (name, val), port in zip(inputs, model.inputs, strict=True):
            dims = symbolic_shape(val)
            shapes[port.get_any_name() if port.get_names() else name] = dims
        try:
            model.reshape({i: ov.PartialShape([-1 if isinstance(d, str) else d for d in dims])
                           for i, dims in enumerate(shapes.values())})
        except Exception as e:
            warns.append(f"could not pin the program's static input dims in the IR ({type(e).__name__}: {e}); "
                         "every input dim is left dynamic")
    else:
        warns.append("the program's inputs do not map one to one onto the IR's; input shapes left as converted")
    details: dict[str, Any] = {"program_input_shapes": shapes}
    xml = _save(model, out_dir, opts.precision, details, warns, _calibration_sets(opts, "torch_export", src, options,
                                                                                 warns))
    return _result(xml, details, warns, "torch")
