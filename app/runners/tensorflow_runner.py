"""TensorFlow SavedModels and Keras models (``.keras``, legacy ``.h5``) on TensorFlow, CPU.

Only where TensorFlow imports: the TF toolchain (``.venv-tf``). In the main environment this says
:class:`RunnerUnavailable`, and the steps that need it (validating a conversion of a TF model)
are queued on ``cpu.tf`` and run under the TF interpreter.

Names: a SavedModel's are its serving signature's (``serving_default``, or the only one). A Keras 3
model's inputs are its input names and its outputs ``output_0``, ``output_1``, ... in the model's
output order, which is what ``model.export`` writes (so a TFLite file converted from it has the
same names); a tf_keras model's are its input and output layer names.

A Keras model whose inspection found code (Lambda layers with marshalled bytecode) is never
loaded: loading it would run that code. Keras 3 files load with ``safe_mode=True`` as well."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from app.runners.base import IOSpec, Runner, RunnerInfo, RunnerUnavailable, Runtime

RUNTIME = Runtime("tensorflow", module="tensorflow", hardware="cpu", toolchain="tf", packages=("tensorflow", "tf_keras", "keras"),
                  also_in=("coreml-tf",))  # TensorFlow 2.12 there runs SavedModels and tf_keras .h5 (not Keras 3)


def _tf():
    try:
        import tensorflow as tf
    except ImportError:
        raise RunnerUnavailable("TensorFlow is not installed here: SavedModel and Keras models run on a worker "
                                "with the TF toolchain (queue cpu.tf, scripts/setup-tf-toolchain)") from None
    return tf


def _dims(shape) -> list[int | None] | None:
    if shape is None:
        return None
    try:
        return [None if d is None else int(d) for d in shape]
    except TypeError:  # unknown rank
        return None


def refuse_code(root: Path, paths: list[str], primary: str) -> None:
    """RunnerUnavailable for a Keras file whose inspection found code to run."""
    from app.formats import detect_and_inspect
    from app.formats.base import ModelFiles

    safety = detect_and_inspect(ModelFiles(Path(root), paths, primary)).get("safety") or {}
    if safety.get("status") == "contains_code":
        raise RunnerUnavailable(f"not loaded: {safety.get('message', 'the model holds code')}")


class TensorFlowRunner(Runner):
    def __init__(self, fmt: str, root: Path, paths: list[str], primary: str, threads: int | None):
        tf = _tf()
        if threads:
            try:  # only before TensorFlow's runtime starts; later calls raise
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(1)
            except RuntimeError:
                pass
        path = Path(root) / primary
        self._tf = tf
        if fmt == "savedmodel":
            folder = path.parent if path.name in ("saved_model.pb", "saved_model.pbtxt") else path
            self._loaded = tf.saved_model.load(str(folder))
            sigs = dict(self._loaded.signatures)
            key = "serving_default" if "serving_default" in sigs else (next(iter(sigs)) if len(sigs) == 1 else None)
            if key is None:
                raise RunnerUnavailable(f"the SavedModel has no 'serving_default' signature (it has "
                                        f"{', '.join(sigs) or 'none'}): which one to run is ambiguous")
            self._fn = sigs[key]
            ins = self._fn.structured_input_signature[1]
            outs = self._fn.structured_outputs
            self._inputs = [IOSpec(n, s.dtype.name, _dims(s.shape)) for n, s in ins.items()]
            self._outputs = [IOSpec(n, s.dtype.name, _dims(s.shape)) for n, s in outs.items()]
            self._call = self._call_signature
            runtime_details: dict[str, Any] = {"signature": key}
        else:
            refuse_code(root, paths, primary)
            if path.suffix == ".keras":
                import keras

                self._model = keras.saving.load_model(str(path), safe_mode=True, compile=False)
                out_names = [f"output_{i}" for i in range(len(self._model.outputs))]
                in_names = [t.name for t in self._model.inputs]
            else:
                import tf_keras

                self._model = tf_keras.models.load_model(str(path), compile=False)
                out_names, in_names = list(self._model.output_names), list(self._model.input_names)
            self._inputs = [IOSpec(n, np.dtype(t.dtype).name if not hasattr(t.dtype, "name") else t.dtype.name,
                                   _dims(t.shape)) for n, t in zip(in_names, self._model.inputs, strict=True)]
            self._outputs = [IOSpec(n, np.dtype(t.dtype).name if not hasattr(t.dtype, "name") else t.dtype.name,
                                    _dims(t.shape)) for n, t in zip(out_names, self._model.outputs, strict=True)]
            self._call = self._call_model
            runtime_details = {"api": "keras" if path.suffix == ".keras" else "tf_keras"}
        self.info = RunnerInfo(runtime="tensorflow", version=tf.__version__, precision="fp32", threads=threads,
                               details=runtime_details)

    def _call_signature(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        specs = self._fn.structured_input_signature[1]
        res = self._fn(**{n: self._tf.constant(feeds[n], dtype=specs[n].dtype) for n in specs})
        return {s.name: np.asarray(res[s.name]) for s in self._outputs}

    def _call_model(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [feeds[s.name] for s in self._inputs]
        res = self._model(args if len(args) > 1 else args[0], training=False)
        res = res if isinstance(res, list | tuple) else [res]
        return {s.name: np.asarray(r) for s, r in zip(self._outputs, res, strict=True)}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [s.name for s in self._inputs if s.name not in feeds]
        if missing:
            raise ValueError(f"missing inputs: {missing}")
        return self._call(feeds)


def load(root: Path, paths: list[str], primary: str, *, precision: str = "fp32", threads: int | None = None,
         fmt: str = "savedmodel", **kw) -> Runner:
    return TensorFlowRunner(fmt, Path(root), paths, primary, threads)
