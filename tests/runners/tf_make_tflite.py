"""Write TFLite twins of the runner tests' torch MLP, from its weights.

Runs under the TF toolchain interpreter (``.venv-tf``), never under the app's venv::

    .venv-tf/bin/python tests/runners/tf_make_tflite.py WEIGHTS.npz OUT_DIR

``WEIGHTS.npz`` holds ``w{i}``/``b{i}`` (torch ``nn.Linear`` layout, [out, in]); hidden layers use ReLU.
Writes ``mlp.tflite`` (float32, input ``features`` float32[None, in]) and ``mlp_int8.tflite``
(full-integer int8 with int8 input/output, calibrated on standard-normal inputs).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


def main(weights: Path, out: Path) -> None:
    import numpy as np
    import tensorflow as tf
    import tf_keras

    out.mkdir(parents=True, exist_ok=True)
    w = np.load(weights)
    n = len([k for k in w.files if k.startswith("w")])
    x = inp = tf_keras.Input(shape=(w["w0"].shape[1],), name="features")
    for i in range(n):
        layer = tf_keras.layers.Dense(w[f"w{i}"].shape[0], activation="relu" if i < n - 1 else None, name=f"fc{i}")
        x = layer(x)
        layer.set_weights([w[f"w{i}"].T, w[f"b{i}"]])
    model = tf_keras.Model(inp, x)

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    (out / "mlp.tflite").write_bytes(conv.convert())

    def rep():
        rng = np.random.default_rng(0)
        for _ in range(64):
            yield [rng.standard_normal((1, w["w0"].shape[1])).astype("float32")]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = rep
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    (out / "mlp_int8.tflite").write_bytes(conv.convert())


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: tf_make_tflite.py WEIGHTS.npz OUT_DIR")
    main(Path(sys.argv[1]), Path(sys.argv[2]))
