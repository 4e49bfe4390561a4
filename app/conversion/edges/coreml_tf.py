"""TensorFlow SavedModel -> Core ML ``.mlpackage`` (ML Program) with coremltools' TensorFlow 2
frontend, in the ``coreml-tf`` toolchain (``.venv-coreml-tf``, scripts/setup-coreml-tf-toolchain).

coremltools (9.0, the newest) supports TensorFlow 2.1 - 2.12; the TF toolchain is 2.19, so this
edge has its own interpreter with TensorFlow 2.12. A SavedModel written by a newer TensorFlow loads
there as long as its graph uses only ops TensorFlow 2.12 has; one that does not is refused, naming
the op, the TensorFlow that wrote the model and the one here. Keras models reach Core ML through a
SavedModel (the ``keras -> savedmodel`` edge, in the TF toolchain: Keras 3 ``model.export``),
because TensorFlow 2.12's Keras cannot read Keras 3 files.

The serving signature (``serving_default``, or the only one) is converted as a concrete function;
inputs keep the signature's names, outputs are renamed from the graph's (``Identity``, ...) to the
signature's keys, so the artifact takes and gives what its source does. Dimensions the signature
leaves open (``None``) become ``RangeDim`` s (1 to ``max_dim``, default 1: an ML Program needs an upper bound). Core ML has no int64:
int64 inputs and outputs are int32; float32 ones stay float32 at every precision (the
source's, which validation feeds).

Precision as for ``.pt2`` -> Core ML (app/conversion/edges/coreml.py): fp32 / fp16 compute, int8
weights (``linear_quantize_weights``), ``palettize_bits`` (k-means lookup table, scikit-learn).
Prediction needs macOS: validation and benchmarks go to the ``apple`` queue. Runs under an
interpreter without pydantic: the options arrive validated by the planner."""

from __future__ import annotations

import contextlib
import io
import re
import sys
from pathlib import Path
from typing import Any

from app.conversion.edges._common import fail, versions
from app.conversion.edges.coreml import compress, save_package
from app.sandbox.io import ConversionError, Result, Source

_HINT = ("coremltools could not convert this graph: check coremltools' TensorFlow op support list, or target "
         "ONNX / TFLite / OpenVINO instead")
_NOT_REGISTERED = re.compile(r"Op type not registered '([\w>.-]+)'")


def _folder(src: Source) -> Path:
    path = src.primary_path
    return path.parent if path.name in ("saved_model.pb", "saved_model.pbtxt") else path


def _load(folder: Path, written_by: str | None):
    import tensorflow as tf

    try:
        return tf.saved_model.load(str(folder))
    except Exception as e:
        here = tf.__version__
        m = _NOT_REGISTERED.search(str(e))
        if m:
            raise ConversionError(
                f"the SavedModel uses op {m.group(1)}, which TensorFlow {here} does not have (the model was written "
                f"by TensorFlow {written_by or 'of an unrecorded version'}); coremltools "
                f"{versions('coremltools').get('coremltools')} supports TensorFlow up to 2.12, so this model cannot "
                "reach Core ML from TensorFlow", tool="tensorflow", tool_version=here, unsupported_operator=m.group(1),
                hint="rebuild the model without that op, or export it to ONNX / TFLite (which TensorFlow 2.19 "
                     "converts)") from None
        err = fail(e, doing=f"tf.saved_model.load (TensorFlow {here}; the model was written by TensorFlow "
                   f"{written_by or '?'})", tool="tensorflow")
        raise err from None


def _signature(loaded):
    sigs = dict(loaded.signatures)
    if "serving_default" in sigs:
        return "serving_default", sigs["serving_default"]
    if len(sigs) == 1:
        return next(iter(sigs.items()))
    raise ConversionError(f"the SavedModel has no 'serving_default' signature (it has {', '.join(sigs) or 'none'})",
                          tool="tensorflow", hint="save the model with the signature to serve as serving_default")


def _io_dtype(tf_dtype):
    """The Core ML dtype of a float32 / integer tensor, as the source has it (coremltools would make the I/O of
    a float16 model float16); None: coremltools decides."""
    import numpy as np

    return {"float32": np.float32, "int64": np.int32, "int32": np.int32}.get(tf_dtype.name)


def _output_types(ct, fn) -> list:
    return [ct.TensorType(name=t.name.rsplit(":", 1)[0], dtype=_io_dtype(t.dtype)) for t in fn.outputs]


def _input_types(ct, fn, max_dim: int) -> list:
    """One TensorType per signature input, open dims as RangeDims (coremltools fixes them to 1 otherwise)."""
    _, kwargs = fn.structured_input_signature
    types = []
    for name, spec in sorted(kwargs.items()):
        dims = spec.shape.as_list() if spec.shape.rank is not None else None
        if dims is None:
            raise ConversionError(f"input '{name}' has unknown rank: Core ML needs each input's rank",
                                  tool="coremltools", hint="save the signature with a TensorSpec of known rank")
        shape = [ct.RangeDim(lower_bound=1, upper_bound=max_dim, default=1) if d is None else int(d) for d in dims]
        types.append(ct.TensorType(name=name, shape=ct.Shape(shape) if shape else (), dtype=_io_dtype(spec.dtype)))
    return types


def from_savedmodel(src: Source, out_dir: Path, options: dict[str, Any]) -> Result:
    import coremltools as ct
    import tensorflow as tf

    precision = options.get("precision", "fp32")
    bits = options.get("palettize_bits")
    target_name = options.get("minimum_deployment_target", "iOS17")
    written_by = ((src.inspection or {}).get("versions") or {}).get("tensorflow")
    loaded = _load(_folder(src), written_by)
    key, fn = _signature(loaded)
    flat = tf.nest.flatten(fn.structured_outputs, expand_composites=True)
    out_keys = sorted(fn.structured_outputs) if isinstance(fn.structured_outputs, dict) else None
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            model = ct.convert([fn], source="tensorflow", inputs=_input_types(ct, fn, int(options.get("max_dim", 1024))),
                               outputs=_output_types(ct, fn), convert_to="mlprogram",
                               minimum_deployment_target=getattr(ct.target, target_name),
                               compute_precision=ct.precision.FLOAT32 if precision == "fp32"
                               else ct.precision.FLOAT16)
    except ConversionError:
        raise
    except Exception as e:
        sys.stdout.write(log.getvalue()[-8000:])
        raise fail(e, doing=f"coremltools.convert (SavedModel signature '{key}', TensorFlow {tf.__version__})",
                   tool="coremltools", hint=_HINT) from None
    sys.stdout.write(log.getvalue()[-4000:])
    warns: list[str] = []
    spec = model.get_spec()
    if out_keys is not None and len(out_keys) == len(flat) == len(spec.description.output):
        # the concrete function's outputs are the flattened dict (sorted keys), in order
        graph_names = [t.name.rsplit(":", 1)[0] for t in fn.outputs]
        rename = dict(zip(graph_names, out_keys, strict=True))
        for old in [o.name for o in spec.description.output]:
            if old in rename and rename[old] != old:
                ct.utils.rename_feature(spec, old, rename[old], rename_inputs=False)
        model = ct.models.MLModel(spec, weights_dir=model.weights_dir)
    else:
        warns.append("outputs keep the graph's names (" + ", ".join(o.name for o in spec.description.output) + ")")
    steps = [f"coremltools.convert (TensorFlow {tf.__version__} SavedModel '{key}', mlprogram, {precision} compute, "
             f"{target_name})"]
    model = compress(model, precision, bits, steps, warns)
    others = [k for k in loaded.signatures if k != key]
    if others:
        warns.append(f"converted signature '{key}'; the others ({', '.join(others)}) are not in the Core ML model")
    if written_by and written_by.split(".")[:2] != tf.__version__.split(".")[:2]:
        warns.append(f"the SavedModel was written by TensorFlow {written_by} and converted with TensorFlow "
                     f"{tf.__version__} (the newest coremltools supports)")
    primary, spec = save_package(model, out_dir)
    details = {"precision": precision, "palettize_bits": bits, "steps": steps, "signature": key,
               "written_by_tensorflow": written_by, "specification_version": int(spec.specificationVersion),
               "inputs": [i.name for i in spec.description.input], "outputs": [o.name for o in spec.description.output]}
    return Result(primary=primary.relative_to(out_dir).as_posix(), details=details, warnings=warns,
                  versions=versions("coremltools", "tensorflow", "tensorflow-cpu"))
