"""Keras -> TensorFlow SavedModel, in the TF toolchain (``.venv-tf``).

- Keras 3 ``.keras``: loaded with ``safe_mode`` (a model whose Lambda layers hold code is refused:
  loading it would run that code), written by ``model.export(format="tf_saved_model")``: a
  ``serving_default`` signature with the model's input names and outputs ``output_0``, ``output_1``,
  ... (what the TensorFlow runner calls a Keras 3 model's outputs);
- tf_keras ``.h5``: ``tf.saved_model.save``, whose signature names inputs and outputs after the
  model's input and output layers (what the runner calls them).

A SavedModel is what TensorFlow Serving loads, and the route by which a Keras model reaches Core ML
(coremltools' TensorFlow 2.12 cannot read Keras 3 files; it loads this SavedModel). Runs under the TF
interpreter, where pydantic is not installed."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

from app.conversion.edges._common import fail, versions
from app.sandbox.io import ConversionError, Result, Source

FOLDER = "model.savedmodel"


def keras_to_savedmodel(src: Source, out_dir: Path, options: dict[str, Any]) -> Result:
    safety = (src.inspection or {}).get("safety") or {}
    if safety.get("status") == "contains_code":
        raise ConversionError(f"not converted: {safety.get('message', 'the model holds code')}",
                              hint="rebuild the model without Lambda layers (or with registered custom layers)")
    path, folder = src.primary_path, out_dir / FOLDER
    log = io.StringIO()
    if path.suffix == ".keras":
        import keras

        try:
            model = keras.saving.load_model(str(path), safe_mode=True, compile=False)
        except Exception as e:
            raise fail(e, doing="loading the Keras model (safe_mode)", tool="keras") from None
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                model.export(str(folder), format="tf_saved_model", verbose=False)
        except Exception as e:
            raise fail(e, doing="keras model.export (tf_saved_model)", tool="keras") from None
        api = "keras (model.export)"
    else:
        import tensorflow as tf
        import tf_keras

        try:
            model = tf_keras.models.load_model(str(path), compile=False)
        except Exception as e:
            raise fail(e, doing="loading the Keras model", tool="tf_keras") from None
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                tf.saved_model.save(model, str(folder))
        except Exception as e:
            raise fail(e, doing="tf.saved_model.save of the tf_keras model", tool="tensorflow") from None
        api = "tf_keras (tf.saved_model.save)"
    if not (folder / "saved_model.pb").exists():
        raise ConversionError("the export wrote no saved_model.pb", tool="keras")
    return Result(primary=f"{FOLDER}/saved_model.pb", details={"api": api, "signature": "serving_default"},
                  versions=versions("tensorflow", "keras", "tf_keras"))
