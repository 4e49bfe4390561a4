"""torch.export ``.pt2`` -> Core ML ``.mlpackage`` (ML Program) with coremltools.

Conversion runs anywhere; prediction needs macOS, so the artifact's validation and benchmark go
to the ``apple`` queue and wait there, visibly, for a macOS worker. Here the artifact's own spec
is inspected (inputs, outputs, minimum deployment target) like any upload.

Precision: ``fp32`` (compute_precision FLOAT32), ``fp16`` (FLOAT16: Core ML's default on the
Neural Engine), ``int8`` (fp16 compute, weights linearly quantised to int8 by
``coremltools.optimize.coreml.linear_quantize_weights``); ``palettize_bits`` (1-8) clusters the
weights into a lookup table instead (``palettize_weights``, k-means)."""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path
from typing import Any

from app.conversion.edges._common import fail, versions
from app.sandbox.io import ConversionError, Result, Source

_HINT = "coremltools could not convert this program: check its op support list, or target ONNX / OpenVINO"


def compress(model, precision: str, bits: Any, steps: list[str], warns: list[str]):
    """The weight compression the options ask for (int8 linear quantisation, k-means palettization),
    said in ``steps``/``warns``; shared with the TensorFlow frontend (coreml_tf)."""
    try:
        from coremltools.optimize import coreml as opt

        if precision == "int8":
            cfg = opt.OptimizationConfig(global_config=opt.OpLinearQuantizerConfig(mode="linear_symmetric"))
            model = opt.linear_quantize_weights(model, config=cfg)
            steps.append("linear_quantize_weights (int8, symmetric)")
        if bits:
            cfg = opt.OptimizationConfig(global_config=opt.OpPalettizerConfig(mode="kmeans", nbits=int(bits)))
            model = opt.palettize_weights(model, config=cfg)
            steps.append(f"palettize_weights ({bits}-bit k-means lookup table)")
    except Exception as e:
        raise fail(e, doing="coremltools.optimize", tool="coremltools") from None
    if precision != "fp32":
        warns.append(f"{precision}: Core ML computes in float16 (the Neural Engine's precision)")
    return model


def save_package(model, out_dir: Path):
    """``out_dir/model.mlpackage`` written; (its model.mlmodel, the model's spec)."""
    out = out_dir / "model.mlpackage"
    model.save(str(out))
    primary = out / "Data" / "com.apple.CoreML" / "model.mlmodel"
    if not primary.exists():
        raise ConversionError("coremltools wrote no Data/com.apple.CoreML/model.mlmodel in the package",
                              tool="coremltools")
    return primary, model.get_spec()


def from_program(src: Source, out_dir: Path, options: dict[str, Any]) -> Result:
    import coremltools as ct
    import torch

    precision = options.get("precision", "fp32")
    bits = options.get("palettize_bits")
    target = getattr(ct.target, options.get("minimum_deployment_target", "iOS17"))
    try:
        ep = torch.export.load(str(src.primary_path))
        ep = ep.run_decompositions({})
    except Exception as e:
        raise fail(e, doing="torch.export.load", tool="torch") from None
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            model = ct.convert(ep, convert_to="mlprogram", minimum_deployment_target=target,
                               compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16)
    except Exception as e:
        sys.stdout.write(log.getvalue()[-8000:])
        raise fail(e, doing="coremltools.convert (torch.export)", tool="coremltools", hint=_HINT) from None
    warns: list[str] = []
    steps = [f"coremltools.convert (mlprogram, {precision} compute, {options.get('minimum_deployment_target', 'iOS17')})"]
    model = compress(model, precision, bits, steps, warns)
    primary, spec = save_package(model, out_dir)
    details = {"precision": precision, "palettize_bits": bits, "steps": steps,
               "specification_version": int(spec.specificationVersion),
               "inputs": [i.name for i in spec.description.input], "outputs": [o.name for o in spec.description.output]}
    return Result(primary=primary.relative_to(out_dir).as_posix(), details=details, warnings=warns,
                  versions=versions("coremltools", "torch"))
