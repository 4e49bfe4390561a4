"""TensorFlow family -> ONNX with tf2onnx, in the TF toolchain (``.venv-tf``: tf2onnx needs
TensorFlow itself). So a TensorFlow model reaches ONNX Runtime, OpenVINO and (through ONNX)
TensorRT. Validated against the upload run by TensorFlow / LiteRT, in the same interpreter.

- SavedModel: the serving signature, traced with ``tf.function`` (tf2onnx's ``from_function``),
  input and output names kept from the signature;
- Keras 3 ``.keras``: loaded with ``safe_mode`` (models whose Lambda layers hold code are refused:
  loading them would run it), ``model.export`` to a SavedModel, then as above; tf_keras ``.h5``:
  ``tf2onnx.convert.from_keras``;
- TFLite: tf2onnx's TFLite frontend (``from_tflite``), names from the TFLite signature.

Dynamic dims stay dynamic (``None`` in the signature becomes a symbolic ONNX dim). Runs under the
TF interpreter, where pydantic is not installed: the options arrive validated by the planner."""

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

_HINT = ("tf2onnx could not convert this graph: try another opset, or check that every op has an ONNX "
         "counterpart (tf2onnx's support list); TFLite is another target that keeps TensorFlow's ops")


def _signature(folder: Path):
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(folder))
    except Exception as e:
        raise fail(e, doing="tf.saved_model.load", tool="tensorflow") from None
    sigs = dict(loaded.signatures)
    if "serving_default" in sigs:
        return loaded, "serving_default", sigs["serving_default"]
    if len(sigs) == 1:
        (key, fn), = sigs.items()
        return loaded, key, fn
    raise ConversionError(f"the SavedModel has no 'serving_default' signature (it has {', '.join(sigs) or 'none'})",
                          tool="tensorflow", hint="save the model with the signature to serve as serving_default")


def _from_saved_model(folder: Path, out: Path, opset: int) -> tuple[dict[str, Any], list[str]]:
    import tensorflow as tf
    import tf2onnx

    loaded, key, fn = _signature(folder)
    _, kwargs = fn.structured_input_signature
    names = sorted(kwargs)
    specs = [tf.TensorSpec(kwargs[n].shape, kwargs[n].dtype, name=n) for n in names]

    @tf.function(input_signature=specs)
    def serve(*args):
        return fn(**dict(zip(names, args, strict=True)))

    outputs = sorted(fn.structured_outputs)
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            model, _ = tf2onnx.convert.from_function(serve, input_signature=specs, opset=opset)
    except Exception as e:
        sys.stdout.write(log.getvalue()[-8000:])
        raise fail(e, doing="tf2onnx.convert.from_function (the serving signature)", tool="tf2onnx",
                   hint=_HINT) from None
    sys.stdout.write(log.getvalue()[-4000:])
    _rename_outputs(model, outputs)
    _save(model, out)
    warns = []
    others = [k for k in loaded.signatures if k != key]
    if others:
        warns.append(f"converted signature '{key}'; the others ({', '.join(others)}) are not in the ONNX file")
    return {"signature": key, "inputs": names, "outputs": outputs}, warns


def _rename_outputs(model, names: list[str]) -> None:
    """tf2onnx names outputs after the graph's tensors (``Identity:0``); the signature's keys are what
    the TensorFlow runner (and so validation) calls them. The function returns a dict, whose values
    tf2onnx emits in sorted-key order."""
    graph = model.graph
    if len(graph.output) != len(names):
        return
    rename = {o.name: n for o, n in zip(graph.output, names, strict=True)}
    for node in graph.node:
        node.output[:] = [rename.get(x, x) for x in node.output]
        node.input[:] = [rename.get(x, x) for x in node.input]
    for o in graph.output:
        o.name = rename[o.name]


def _save(model, out: Path) -> None:
    import onnx

    onnx.checker.check_model(model)
    onnx.save(model, str(out))


def _strip_tf_suffix(model) -> None:
    """Graph input names without TensorFlow's ``:0`` suffix, as the source calls them."""
    rename = {i.name: i.name.rsplit(":", 1)[0] for i in model.graph.input if i.name.endswith(":0")}
    for i in model.graph.input:
        i.name = rename.get(i.name, i.name)
    for node in model.graph.node:
        node.input[:] = [rename.get(x, x) for x in node.input]


def _opset(options: dict[str, Any]) -> int:
    return int(options.get("opset", 17))


def from_savedmodel(src: Source, out_dir: Path, options: dict[str, Any]) -> Result:
    path = src.primary_path
    folder = path.parent if path.name in ("saved_model.pb", "saved_model.pbtxt") else path
    details, warns = _from_saved_model(folder, out_dir / "model.onnx", _opset(options))
    return Result(primary="model.onnx", details={**details, "opset": _opset(options)}, warnings=warns,
                  versions=versions("tf2onnx", "tensorflow", "onnx"))


def from_keras(src: Source, out_dir: Path, options: dict[str, Any]) -> Result:
    safety = (src.inspection or {}).get("safety") or {}
    if safety.get("status") == "contains_code":
        raise ConversionError(f"not converted: {safety.get('message', 'the model holds code')}",
                              hint="rebuild the model without Lambda layers (or with registered custom layers)")
    path, opset = src.primary_path, _opset(options)
    if path.suffix == ".keras":
        import keras

        try:
            model = keras.saving.load_model(str(path), safe_mode=True, compile=False)
            folder = Path(tempfile.mkdtemp(prefix="keras-export-", dir=out_dir.parent))
            model.export(str(folder), format="tf_saved_model", verbose=False)
        except Exception as e:
            raise fail(e, doing="loading and exporting the Keras model", tool="keras") from None
        try:
            details, warns = _from_saved_model(folder, out_dir / "model.onnx", opset)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        details["api"] = "keras (model.export)"
    else:
        import tf2onnx
        import tf_keras

        try:
            model = tf_keras.models.load_model(str(path), compile=False)
        except Exception as e:
            raise fail(e, doing="loading the Keras model", tool="tf_keras") from None
        log = io.StringIO()
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                onnx_model, _ = tf2onnx.convert.from_keras(model, opset=opset)
        except Exception as e:
            sys.stdout.write(log.getvalue()[-8000:])
            raise fail(e, doing="tf2onnx.convert.from_keras", tool="tf2onnx", hint=_HINT) from None
        _strip_tf_suffix(onnx_model)
        _save(onnx_model, out_dir / "model.onnx")
        details, warns = {"api": "tf_keras (from_keras)"}, []
    return Result(primary="model.onnx", details={**details, "opset": opset}, warnings=warns,
                  versions=versions("tf2onnx", "tensorflow", "onnx", "keras", "tf_keras"))


def from_tflite(src: Source, out_dir: Path, options: dict[str, Any]) -> Result:
    import tf2onnx

    opset = _opset(options)
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            model, _ = tf2onnx.convert.from_tflite(str(src.primary_path), opset=opset)
    except Exception as e:
        sys.stdout.write(log.getvalue()[-8000:])
        raise fail(e, doing="tf2onnx.convert.from_tflite", tool="tf2onnx", hint=_HINT) from None
    sys.stdout.write(log.getvalue()[-4000:])
    _strip_tf_suffix(model)
    _save(model, out_dir / "model.onnx")
    return Result(primary="model.onnx", details={"opset": opset, "frontend": "tflite"}, warnings=[],
                  versions=versions("tf2onnx", "tensorflow", "onnx"))
