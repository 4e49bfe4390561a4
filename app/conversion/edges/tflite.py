"""ONNX -> TFLite with onnx2tf, in the TF toolchain (``.venv-tf``: TensorFlow 2.19 pins numpy 1.26
and its own onnx, so it can't share the main interpreter; see scripts/setup-tf-toolchain).

onnx2tf rewrites NCHW graphs as NHWC, which TFLite's kernels prefer. Inputs of rank 3-5 keep the
source's layout here (``keep_ncw_or_nchw_or_ncdhw_input_names``: one Transpose at the start), so
the artifact takes the same tensors as its source and validation compares like with like. Dynamic
batch dims stay dynamic (-1 in the TFLite shape signature); onnx2tf needs every other dim static,
so dynamic ones are fixed first to sizes the source runs on (app.runners.search, on ONNX Runtime;
the job's input_specs win), with a warning naming them, and validation runs at those sizes. Precision: fp32, fp16 (float16
weights, dequantized at load), int8 (dynamic-range: int8 weights, float activations).

Only TFLite builtin operators are accepted: ``Erf`` (GELU) would otherwise become the select-TF op
``FlexErf``, which stock TFLite runtimes (LiteRT, Android without select-ops) cannot run, so it
is written with builtin ops (onnx2tf's pseudo Erf, Abramowitz-Stegun 7.1.26, |error| < 1.5e-7).
The artifact's operator codes are read before it is accepted; one that still needs TensorFlow
ops fails the conversion and names them. onnx2tf keeps a -1 batch in the signature even where a
Reshape fixed the batch; LiteRT runs the artifact at batch 2 here, and if it can't, it is
converted again with the batch pinned to 1 (a warning says so).

Runs under the TF interpreter, where pydantic is not installed: the options arrive validated, with
defaults filled, by the planner (app.conversion.planner)."""

from __future__ import annotations

import contextlib
import io
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from app.conversion.edges._common import fail, versions
from app.sandbox.io import ConversionError, Result, Source

_OUTPUT_SUFFIX = {"fp32": "_float32.tflite", "fp16": "_float16.tflite", "int8": "_dynamic_range_quant.tflite"}
_HINT = ("onnx2tf could not convert this graph: give it static shapes (re-export with fixed sizes), "
         "simplify it (onnxsim), or target ONNX Runtime / OpenVINO instead")


def _layout_inputs(model) -> list[str]:
    """Graph inputs (not initializers) of rank 3 to 5: the ones onnx2tf would turn channels-last."""
    inits = {t.name for t in model.graph.initializer}
    names = []
    for inp in model.graph.input:
        if inp.name in inits or not inp.type.HasField("tensor_type"):
            continue
        if inp.type.tensor_type.HasField("shape") and 3 <= len(inp.type.tensor_type.shape.dim) <= 5:
            names.append(inp.name)
    return names


def _check_builtin_only(path: Path) -> None:
    """Refuse a model that needs select-TF ("Flex") or other custom ops: stock TFLite runtimes
    can't run them. Reads the op codes (LiteRT next to TensorFlow would load Flex ops, so trying
    to load the model here proves nothing)."""
    from tensorflow.lite.tools import flatbuffer_utils

    custom_code = 32  # tflite BuiltinOperator.CUSTOM
    model = flatbuffer_utils.read_model(str(path))
    custom = sorted({(oc.customCode or b"").decode("utf-8", "replace") or "<unnamed>" for oc in model.operatorCodes
                     if custom_code in (oc.builtinCode, oc.deprecatedBuiltinCode)})
    if custom:
        raise ConversionError(
            f"the TFLite model needs operators stock TFLite runtimes lack: {', '.join(custom)} (TensorFlow "
            "select ops)", tool="onnx2tf", tool_version=versions("onnx2tf").get("onnx2tf"),
            unsupported_operator=", ".join(c.removeprefix("Flex") for c in custom),
            hint="replace those operators in the source model, or target ONNX Runtime / OpenVINO")


def _runs_batched(path: Path) -> bool:
    """Whether a model whose inputs have a dynamic batch dim runs at batch 2 (LiteRT here). onnx2tf
    keeps the -1 in the signature even where a Reshape in the graph fixed the batch to 1."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    try:
        it = Interpreter(model_path=str(path))
        details = it.get_input_details()
    except Exception as e:
        raise fail(e, doing="loading the converted model with LiteRT", tool="ai-edge-litert") from None
    if not details or not all(len(d["shape_signature"]) and d["shape_signature"][0] == -1 for d in details):
        return True  # nothing to vary
    try:
        for d in details:
            it.resize_tensor_input(d["index"], [2, *[int(x) for x in d["shape"][1:]]])
        it.allocate_tensors()
        for d in it.get_input_details():
            it.set_tensor(d["index"], np.zeros(d["shape"], dtype=d["dtype"]))
        it.invoke()
    except (RuntimeError, ValueError):
        return False
    return True


def _dynamic(d) -> bool:
    return not d.HasField("dim_value") or d.dim_value < 0


def _graph_inputs(model) -> list:
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits and i.type.HasField("tensor_type")]


def _has_dynamic_batch(model) -> bool:
    return any(i.type.tensor_type.shape.dim and _dynamic(i.type.tensor_type.shape.dim[0]) for i in _graph_inputs(model))


def _fix_dynamic_dims(src: Source, model) -> tuple[Source, list[str], list[str]] | None:
    """A copy of the source with every dynamic dim but the batch fixed to a size the source runs on
    (found by app.runners.search on ONNX Runtime), next to it so external data still resolves; None
    when nothing but the batch is dynamic."""
    import dataclasses

    import onnx

    from app.runners import search
    from app.runners.inputs import input_shape
    from app.runners.onnxruntime_runner import OnnxRuntimeRunner

    dyn = [(i, inp) for i, inp in enumerate(_graph_inputs(model))
           if any(_dynamic(d) for d in list(inp.type.tensor_type.shape.dim)[1:])]
    if not dyn:
        return None
    try:
        runner = OnnxRuntimeRunner(src.primary_path, "fp32", None)
    except Exception as e:
        raise fail(e, doing="loading the source with ONNX Runtime to find static sizes for onnx2tf",
                   tool="onnxruntime") from None
    try:
        specs = runner.inputs()
        plan = search.find(runner, specs, search.evidence("onnx", src.root, src.primary), budget_s=120)
    finally:
        runner.close()
    if not plan.found:
        raise ConversionError(
            "onnx2tf needs static shapes and the source ran on none of the sizes tried for its dynamic dims: "
            + plan.failure(), tool="onnx2tf", tool_version=versions("onnx2tf").get("onnx2tf"),
            hint="give input_specs with fixed sizes, or re-export the model with static shapes")
    index = {s.name: k for k, s in enumerate(specs)}
    fixed = []
    for _, inp in dyn:
        k = index.get(inp.name)
        for j, d in enumerate(inp.type.tensor_type.shape.dim):
            if j == 0 or not _dynamic(d) or k is None:
                continue
            given = ((src.input_specs or {}).get(inp.name) or {}).get("shape") or []
            if j < len(given) and isinstance(given[j], int) and given[j] > 0 and str(j) not in \
                    ((src.input_specs or {}).get(inp.name) or {}).get("dynamic", {}):
                size = int(given[j])  # the user's input_specs win
            else:
                size = int(input_shape(specs[k], 1, index=k, plan=plan)[j])
            d.ClearField("dim_param")
            d.dim_value = size
            fixed.append(f"{inp.name}[{j}]={size}")
    path = src.primary_path.with_name(f".static-{src.primary_path.name}")
    onnx.save(model, str(path))
    rel = str(path.relative_to(src.root))
    return dataclasses.replace(src, primary=rel, paths=[*src.paths, rel]), fixed, plan.why


def _convert_any_batch(src: Source, out_dir: Path, precision: str, keep: list[str], model, warns: list[str]) -> Path:
    """onnx2tf with a dynamic batch, else with the batch pinned to 1 (saying so)."""
    try:
        return _convert(src, out_dir, precision, keep, batch_size=None)
    except ConversionError:
        if not _has_dynamic_batch(model):
            raise
        warns.append("onnx2tf could not convert the graph with a dynamic batch, so the batch is pinned to 1")
        return _convert(src, out_dir, precision, keep, batch_size=1)


def _convert(src: Source, out_dir: Path, precision: str, keep: list[str], batch_size: int | None) -> Path:
    """Run onnx2tf into a fresh folder next to ``out_dir``; the .tflite file it made for ``precision``."""
    import onnx2tf

    work = Path(tempfile.mkdtemp(prefix="onnx2tf-", dir=out_dir.parent))
    log = io.StringIO()
    tool_version = versions("onnx2tf").get("onnx2tf")
    try:
        with contextlib.redirect_stdout(log):
            onnx2tf.convert(
                input_onnx_file_path=str(src.primary_path),
                output_folder_path=str(work),
                copy_onnx_input_output_names_to_tflite=True,
                keep_ncw_or_nchw_or_ncdhw_input_names=keep or None,
                output_dynamic_range_quantized_tflite=precision == "int8",
                replace_to_pseudo_operators=["erf"],  # lower case: the API compares so
                batch_size=batch_size,
                non_verbose=True,
            )
    except SystemExit as e:  # onnx2tf exits after printing its error
        sys.stdout.write(log.getvalue()[-20000:])
        raise ConversionError(f"onnx2tf failed (exit status {e.code}); its output is in the job log",
                              tool="onnx2tf", tool_version=tool_version, hint=_HINT) from None
    except Exception as e:
        sys.stdout.write(log.getvalue()[-20000:])
        raise fail(e, doing="onnx2tf.convert", tool="onnx2tf", hint=_HINT) from None
    sys.stdout.write(log.getvalue()[-4000:])
    made = sorted(work.glob(f"*{_OUTPUT_SUFFIX[precision]}"))
    if not made:
        raise ConversionError(f"onnx2tf wrote no {_OUTPUT_SUFFIX[precision]} file "
                              f"(it wrote: {', '.join(sorted(p.name for p in work.iterdir())) or 'nothing'})",
                              tool="onnx2tf", tool_version=tool_version, hint=_HINT)
    return made[0]


def from_onnx(src: Source, out_dir: Path, options: dict[str, Any]) -> Result:
    import onnx

    opts = _opts(options)
    precision = opts.precision
    if precision not in _OUTPUT_SUFFIX:
        raise ConversionError(f"precision must be one of {', '.join(_OUTPUT_SUFFIX)}, got {precision!r}")
    calibrated = _calibrated(opts)
    made_as = "fp32" if calibrated else precision  # full-integer: from onnx2tf's float SavedModel
    quantized: dict[str, Any] = {}
    try:
        model = onnx.load(str(src.primary_path), load_external_data=False)
    except Exception as e:
        raise fail(e, doing="reading the ONNX model", tool="onnx") from None
    keep = _layout_inputs(model)
    warns: list[str] = []
    static = _fix_dynamic_dims(src, model)
    conv_src = src
    if static is not None:
        conv_src, fixed, why = static
        warns.append("onnx2tf needs static shapes: dynamic dims fixed to sizes the source runs on ("
                     + ", ".join(fixed) + (f"; {'; '.join(why)}" if why else "") + "); the TFLite model runs at "
                     "these sizes only (the batch stays dynamic)")
    try:
        made = _convert_any_batch(conv_src, out_dir, made_as, keep, model, warns)
    except ConversionError as e:
        if conv_src is src:
            raise
        # onnx2tf takes other code paths at static sizes (grouped convolutions, pools), and some fail
        # where the dynamic graph converts: try the source as it is before giving up
        conv_src.primary_path.unlink(missing_ok=True)
        conv_src = src
        warns[:] = [w for w in warns if "needs static shapes" not in w]
        warns.append(f"onnx2tf failed at the fixed sizes ({e.message[:300]}), so the graph was converted with its "
                     "dynamic dims as they are")
        static = None
        made = _convert_any_batch(src, out_dir, made_as, keep, model, warns)
    try:
        _check_builtin_only(made)  # first: a model LiteRT can't load must not look like a batch problem
        if not _runs_batched(made):
            warns.append("the converted model cannot run another batch size than 1 (a Reshape in the graph fixes "
                         "it), so its batch dimension is pinned to 1")
            shutil.rmtree(made.parent, ignore_errors=True)
            made = _convert(conv_src, out_dir, made_as, keep, batch_size=1)
            _check_builtin_only(made)
        if calibrated:
            made = _full_integer(made, conv_src, opts, options, quantized, warns)
        shutil.move(str(made), out_dir / "model.tflite")
    finally:
        shutil.rmtree(made.parent, ignore_errors=True)
        if conv_src is not src:
            conv_src.primary_path.unlink(missing_ok=True)
    inits = {t.name for t in model.graph.initializer}
    details = {"precision": precision, "kept_input_layout": keep,
               "batch_pinned_to_1": any("pinned to 1" in w for w in warns),
               "fixed_dims": static[1] if static is not None else [],
               "onnx_inputs": [i.name for i in model.graph.input if i.name not in inits],
               "onnx_outputs": [o.name for o in model.graph.output]}
    if calibrated:
        details.update(quantized)
    elif precision == "int8":
        warns.append("int8 is dynamic-range quantisation: int8 weights, float activations (no calibration data)")
    return Result(primary="model.tflite", details=details, warnings=warns,
                  versions=versions("onnx2tf", "tensorflow", "onnx"))


def _opts(options: dict[str, Any]):
    """The options (ToTfliteOptions, validated when the request was made: the TF toolchain has no
    pydantic, so they are read as they were stored)."""
    from types import SimpleNamespace

    return SimpleNamespace(precision=options.get("precision", "fp32"), calibration=options.get("calibration", "none"))


def _calibrated(opts) -> bool:
    return opts.calibration != "none"  # precision=int8: the options refuse it otherwise


def _representative(fmt: str, src: Source, opts, options: dict[str, Any], warns: list[str]):
    """The calibration sets as a TFLite representative dataset (a generator of input dicts)."""
    from app.conversion.edges import _calibration

    sets, where = _calibration.feeds(fmt, src.root, src.primary, opts.calibration, options.get("samples"),
                                     paths=src.paths)
    if opts.calibration == "synthetic":
        warns.append(_calibration.SYNTHETIC_WARNING)
    return sets, where


def _full_integer(made: Path, src: Source, opts, options: dict[str, Any], details: dict[str, Any],
                  warns: list[str]) -> Path:
    """Full-integer TFLite from the float SavedModel onnx2tf wrote next to ``made``: int8 weights and
    activations from a representative dataset (the calibration sets), float inputs and outputs."""
    import tensorflow as tf

    sets, where = _representative("onnx", src, opts, options, warns)
    saved = made.parent
    try:
        loaded = tf.saved_model.load(str(saved))
        sig = loaded.signatures["serving_default"]
        names = list(sig.structured_input_signature[1])
    except Exception as e:
        raise fail(e, doing="reading onnx2tf's SavedModel for full-integer quantisation", tool="tensorflow") from None
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    data = _tf_convert(converter, "int8", "full-integer quantisation (TFLiteConverter, representative dataset)",
                       representative=_dataset(sets, names))
    out = saved / "full_integer.tflite"
    out.write_bytes(data)
    details["quantization"] = "full_integer"
    details["calibration"] = {"sets": len(sets), "source": where}
    details["steps"] = [f"TFLiteConverter.from_saved_model (onnx2tf's float SavedModel), full-integer INT8 with a "
                        f"representative dataset of {where}; float inputs and outputs"]
    return out


def _dataset(sets: list[dict], names: list[str] | None):
    """A representative dataset over ``sets`` keyed by the signature's input ``names`` (by position
    where the names differ: onnx2tf may rewrite them); ``None``: lists in input order."""
    def gen():
        for feeds in sets:
            values = list(feeds.values())
            if names is None:
                yield values
            elif set(names) <= set(feeds):
                yield {n: feeds[n] for n in names}
            else:
                yield {n: values[i] for i, n in enumerate(names)}
    return gen


# ----------------------------------------------------------------------------- TensorFlow sources


def _tf_convert(converter, precision: str, doing: str, representative=None) -> bytes:
    """Run a TFLiteConverter with builtin ops only and the precision asked for (int8 with a
    ``representative`` dataset: full-integer, else dynamic range)."""
    import tensorflow as tf

    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if precision in ("fp16", "int8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]  # int8: dynamic range (weights)
    if precision == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    if representative is not None:  # every op in int8 (the converter fails naming one that cannot be)
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    try:
        return converter.convert()
    except Exception as e:
        text = str(e)
        select = "select" in text.lower() or "flex" in text.lower() or "not supported" in text.lower()
        raise fail(e, doing=doing, tool="tensorflow",
                   hint="the model uses operators TFLite has no builtin for: replace them, or target another "
                        "runtime" if select else None) from None


def _tf_calibrated(src: Source, opts, options: dict[str, Any], warns: list[str], details: dict[str, Any]):
    """The representative dataset of a calibrated int8 request from a TensorFlow source, or None."""
    if not _calibrated(opts):
        return None
    sets, where = _representative(src.format, src, opts, options, warns)
    details["quantization"] = "full_integer"
    details["calibration"] = {"sets": len(sets), "source": where}
    return sets


def _tf_result(data: bytes, out_dir: Path, precision: str, details: dict[str, Any], warns: list[str]) -> Result:
    (out_dir / "model.tflite").write_bytes(data)
    details["precision"] = precision
    if precision == "int8" and details.get("quantization") != "full_integer":
        warns.append("int8 is dynamic-range quantisation: int8 weights, float activations (no calibration data)")
    return Result(primary="model.tflite", details=details, warnings=warns, versions=versions("tensorflow", "keras",
                                                                                               "tf_keras"))


def from_savedmodel(src: Source, out_dir: Path, options: dict[str, Any]) -> Result:
    """SavedModel -> TFLite with tf.lite.TFLiteConverter.from_saved_model (its serving signature)."""
    import tensorflow as tf

    opts = _opts(options)
    precision, warns, details = opts.precision, [], {}
    sets = _tf_calibrated(src, opts, options, warns, details)
    path = src.primary_path
    folder = path.parent if path.name in ("saved_model.pb", "saved_model.pbtxt") else path
    try:
        sigs = list(tf.saved_model.load(str(folder)).signatures)
    except Exception as e:
        raise fail(e, doing="tf.saved_model.load", tool="tensorflow") from None
    if "serving_default" in sigs:
        key = "serving_default"
    elif len(sigs) == 1:
        key = sigs[0]
    else:
        raise ConversionError(f"the SavedModel has no 'serving_default' signature (it has {', '.join(sigs) or 'none'})",
                              tool="tensorflow", hint="save the model with the signature to serve as serving_default")
    converter = tf.lite.TFLiteConverter.from_saved_model(str(folder), signature_keys=[key])
    names = list(tf.saved_model.load(str(folder)).signatures[key].structured_input_signature[1]) if sets else []
    data = _tf_convert(converter, precision, "TFLiteConverter.from_saved_model",
                       representative=_dataset(sets, names) if sets else None)
    if len(sigs) > 1:
        warns.append(f"converted signature '{key}'; the others ({', '.join(s for s in sigs if s != key)}) are not in "
                     "the TFLite file")
    return _tf_result(data, out_dir, precision, {"signature": key, **details}, warns)


def from_keras(src: Source, out_dir: Path, options: dict[str, Any]) -> Result:
    """Keras 3 (.keras: model.export to a SavedModel first) or tf_keras (.h5: from_keras_model) -> TFLite.
    A model whose inspection found code (Lambda bytecode) is refused: loading it would run it."""
    import tensorflow as tf

    safety = (src.inspection or {}).get("safety") or {}
    if safety.get("status") == "contains_code":
        raise ConversionError(f"not converted: {safety.get('message', 'the model holds code')}",
                              hint="rebuild the model without Lambda layers (or with registered custom layers)")
    opts = _opts(options)
    precision, warns, details = opts.precision, [], {}
    sets = _tf_calibrated(src, opts, options, warns, details)
    path = src.primary_path
    try:
        if path.suffix == ".keras":
            import keras

            model = keras.saving.load_model(str(path), safe_mode=True, compile=False)
            folder = Path(tempfile.mkdtemp(prefix="keras-export-", dir=out_dir.parent))
            model.export(str(folder), format="tf_saved_model", verbose=False)
            converter = tf.lite.TFLiteConverter.from_saved_model(str(folder))
        else:
            import tf_keras

            model = tf_keras.models.load_model(str(path), compile=False)
            converter = tf.lite.TFLiteConverter.from_keras_model(model)
    except Exception as e:
        raise fail(e, doing="loading the Keras model", tool="keras" if path.suffix == ".keras" else "tf_keras") from None
    data = _tf_convert(converter, precision, "TFLiteConverter", representative=_dataset(sets, None) if sets else None)
    return _tf_result(data, out_dir, precision, {"api": "keras" if path.suffix == ".keras" else "tf_keras", **details},
                      warns)
