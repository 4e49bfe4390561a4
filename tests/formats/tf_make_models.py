"""Write small real TensorFlow-family models for the format tests.

Runs under the TF toolchain interpreter (``.venv-tf``, made by ``scripts/setup-tf-toolchain``),
never under the app's venv::

    .venv-tf/bin/python tests/formats/tf_make_models.py OUT_DIR

Writes into OUT_DIR:

- ``savedmodel/`` — a tf.Module SavedModel with a ``serving_default`` signature taking
  ``x: float32[None, 8]`` and ``ids: int64[None]`` and returning ``scores: float32[None, 4]`` and
  ``count: int64[]``, plus a second signature ``embed`` (``x`` -> ``emb: float32[None, 4]``).
- ``functional.keras`` — a Keras 3 functional model (inputs ``image`` float32[None, 8, 8, 3] and
  ``meta`` float32[None, 5]; outputs ``logits`` [None, 10] and ``aux`` [None, 1]).
- ``functional.h5`` — the same architecture as a full legacy HDF5 model (tf_keras).
- ``weights_only.h5`` — only the weights of that model (tf_keras ``save_weights``, legacy layout).
- ``keras3.weights.h5`` — only the weights of the Keras 3 model (Keras 3 layout:
  ``layers/<layer>/vars/<i>`` and a root ``vars``).
- ``keras3_subclassed.weights.h5`` — weights of a compiled, fitted Keras 3 subclassed model: its
  top-level groups are named after its layer attributes (``conv2d/vars/0``, ``dense/vars/0``,
  ``dense_1/vars/0``, ``blocks/dense/vars/0`` for a list), the model's own variable in the root
  ``vars``, an ``optimizer`` group, no ``layers`` group.
- ``keras3_subclassed_edited.weights.h5`` / ``keras3_edited.weights.h5`` — those two files
  re-saved by ``keras.saving.KerasFileEditor`` (only groups holding variables: no root ``vars``).
- ``tf_keras_subclassed.h5`` — tf_keras ``save_weights`` (legacy layout) of a subclassed model
  with a variable of its own (in ``top_level_model_weights``).
- ``lambda.h5`` / ``lambda.keras`` — models with a Lambda layer (marshalled Python bytecode in
  the config), tf_keras HDF5 and Keras 3.
- ``sequential.h5`` — a tf_keras Sequential (int32 ``tokens`` -> Embedding -> LSTM -> Dense).
- ``savedmodel_text/saved_model.pbtxt`` — the SavedModel in protobuf text format.
- ``dense.tflite`` / ``dense_int8.tflite`` — a small Keras MLP (``features`` float32[None, 8])
  converted with TFLiteConverter, float and full-integer int8 quantized.
- ``facts.json`` — what the test should find (param counts etc.), computed by TF itself.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


def main(out: Path) -> None:
    import numpy as np
    import tensorflow as tf

    out.mkdir(parents=True, exist_ok=True)
    tf.random.set_seed(0)
    facts: dict = {"tensorflow": tf.__version__}

    # --- SavedModel -------------------------------------------------------------------------
    class Scorer(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(tf.random.normal([8, 4]), name="w")
            self.b = tf.Variable(tf.zeros([4]), name="b")

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, 8], tf.float32, name="x"),
                tf.TensorSpec([None], tf.int64, name="ids"),
            ]
        )
        def serve(self, x, ids):
            return {"scores": tf.matmul(x, self.w) + self.b, "count": tf.size(ids, out_type=tf.int64)}

        @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32, name="x")])
        def embed(self, x):
            return {"emb": tf.nn.relu(tf.matmul(x, self.w))}

    m = Scorer()
    tf.saved_model.save(m, str(out / "savedmodel"), signatures={"serving_default": m.serve, "embed": m.embed})
    facts["savedmodel_params"] = 8 * 4 + 4

    # The same SavedModel in protobuf text format (saved_model.pbtxt).
    from google.protobuf import text_format
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString((out / "savedmodel" / "saved_model.pb").read_bytes())
    (out / "savedmodel_text").mkdir(exist_ok=True)
    (out / "savedmodel_text" / "saved_model.pbtxt").write_text(text_format.MessageToString(sm))

    # --- Keras 3 functional (.keras) --------------------------------------------------------
    import keras

    def build(k):
        image = k.Input(shape=(8, 8, 3), name="image")
        meta = k.Input(shape=(5,), name="meta")
        h = k.layers.Conv2D(4, 3, activation="relu", name="conv")(image)
        h = k.layers.GlobalAveragePooling2D(name="gap")(h)
        h = k.layers.Concatenate(name="cat")([h, meta])
        h = k.layers.Dense(16, activation="relu", name="hidden")(h)
        logits = k.layers.Dense(10, name="logits")(h)
        aux = k.layers.Dense(1, activation="sigmoid", name="aux")(h)
        return k.Model(inputs=[image, meta], outputs=[logits, aux], name="two_heads")

    km = build(keras)
    km.save(out / "functional.keras")
    facts["keras_version"] = keras.__version__
    facts["keras_params"] = int(km.count_params())
    facts["keras_layers"] = len(km.layers)

    # --- tf_keras (Keras 2) legacy HDF5: full model, weights only, Lambda ------------------
    import tf_keras

    k2 = build(tf_keras)
    k2.save(out / "functional.h5", save_format="h5")
    k2.save_weights(out / "weights_only.h5")  # legacy layout: root attribute layer_names
    km.save_weights(out / "keras3.weights.h5")  # Keras 3 layout: layers/<name>/vars/<i>
    facts["tf_keras_version"] = tf_keras.__version__
    facts["h5_params"] = int(k2.count_params())
    facts["h5_layers"] = len(k2.layers)

    # --- Keras 3 weights of a subclassed model: top-level groups named after its layers ------
    # Keras walks attributes in sorted order and saves each layer once, at the first path it
    # meets: attributes sorting before "layers" take every layer, so no "layers" group is
    # written (an attribute sorting after it, e.g. "pool", would land in layers/<class>/vars).
    class Sub(keras.Model):
        def __init__(self) -> None:
            super().__init__(name="sub")
            self.conv2d = keras.layers.Conv2D(4, 3, name="conv2d")
            self.gap = keras.layers.GlobalAveragePooling2D(name="gap")
            self.dense = keras.layers.Dense(6, name="dense")
            self.blocks = [keras.layers.Dense(6, name="b0"), keras.layers.Dense(6, name="b1")]
            self.dense_1 = keras.layers.Dense(2, name="dense_1")
            self.scale = self.add_weight(shape=(2,), initializer="ones", name="scale")

        def call(self, x):
            h = self.dense(self.gap(self.conv2d(x)))
            for b in self.blocks:
                h = b(h)
            return self.dense_1(h) * self.scale

    sub = Sub()
    sub.compile("adam", "mse")
    sub.fit(np.zeros((2, 8, 8, 3), "float32"), np.zeros((2, 2), "float32"), epochs=1, verbose=0)
    sub.save_weights(out / "keras3_subclassed.weights.h5")
    facts["keras3_sub_params"] = int(sub.count_params())
    facts["keras3_sub_tensors"] = len(sub.weights)
    # KerasFileEditor re-saves only the groups that hold variables (no empty root "vars").
    keras.saving.KerasFileEditor(str(out / "keras3_subclassed.weights.h5")).save(
        str(out / "keras3_subclassed_edited.weights.h5")
    )
    keras.saving.KerasFileEditor(str(out / "keras3.weights.h5")).save(str(out / "keras3_edited.weights.h5"))

    class SubK2(tf_keras.Model):
        def __init__(self) -> None:
            super().__init__(name="sub2")
            self.d1 = tf_keras.layers.Dense(3)
            self.d2 = tf_keras.layers.Dense(1)
            self.extra = self.add_weight(shape=(2,), name="extra")

        def call(self, x):
            return self.d2(self.d1(x)) + tf_keras.backend.sum(self.extra)

    sub2 = SubK2()
    sub2(np.zeros((1, 5), "float32"))
    sub2.save_weights(out / "tf_keras_subclassed.h5")  # legacy: layer_names + top_level_model_weights
    facts["tf_keras_sub_params"] = int(sub2.count_params())

    inp = tf_keras.Input(shape=(4,), name="v")
    lam = tf_keras.layers.Lambda(lambda t: t * 2.0 + 1.0, name="affine")(inp)
    lm = tf_keras.Model(inp, tf_keras.layers.Dense(2, name="head")(lam))
    lm.save(out / "lambda.h5", save_format="h5")

    kin = keras.Input(shape=(4,), name="v")
    kl = keras.Model(
        kin, keras.layers.Dense(2, name="head")(keras.layers.Lambda(lambda t: t * 2.0, name="twice")(kin))
    )
    kl.save(out / "lambda.keras")

    seq = tf_keras.Sequential(
        [
            tf_keras.Input(shape=(12,), dtype="int32", name="tokens"),
            tf_keras.layers.Embedding(50, 6, name="emb"),
            tf_keras.layers.LSTM(7, name="lstm"),
            tf_keras.layers.Dense(2, activation="softmax", name="cls"),
        ],
        name="seq",
    )
    seq.save(out / "sequential.h5", save_format="h5")
    facts["seq_params"] = int(seq.count_params())

    # --- TFLite ---------------------------------------------------------------------------
    mlp_in = tf_keras.Input(shape=(8,), name="features")
    # Non-zero biases: the converter drops all-zero bias constants, which would change params.
    h = tf_keras.layers.Dense(16, activation="relu", name="fc1", bias_initializer="ones")(mlp_in)
    probs = tf_keras.layers.Dense(3, activation="softmax", name="probs", bias_initializer="ones")(h)
    mlp = tf_keras.Model(mlp_in, probs)
    facts["mlp_params"] = int(mlp.count_params())

    conv = tf.lite.TFLiteConverter.from_keras_model(mlp)
    (out / "dense.tflite").write_bytes(conv.convert())

    def rep():
        rng = np.random.default_rng(0)
        for _ in range(16):
            yield [rng.standard_normal((1, 8)).astype("float32")]

    conv = tf.lite.TFLiteConverter.from_keras_model(mlp)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = rep
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    (out / "dense_int8.tflite").write_bytes(conv.convert())

    # Ground truth for the quantized I/O, from TF's own interpreter.
    interp = tf.lite.Interpreter(model_path=str(out / "dense_int8.tflite"))
    facts["int8_io"] = {
        "inputs": [
            {
                "name": d["name"],
                "dtype": np.dtype(d["dtype"]).name,
                "scale": float(d["quantization"][0]),
                "zero_point": int(d["quantization"][1]),
                "shape_signature": [int(x) for x in d["shape_signature"]],
            }
            for d in interp.get_input_details()
        ],
        "outputs": [
            {
                "name": d["name"],
                "dtype": np.dtype(d["dtype"]).name,
                "scale": float(d["quantization"][0]),
                "zero_point": int(d["quantization"][1]),
                "shape_signature": [int(x) for x in d["shape_signature"]],
            }
            for d in interp.get_output_details()
        ],
    }
    interp = tf.lite.Interpreter(model_path=str(out / "dense.tflite"))
    facts["float_io"] = {
        "inputs": [d["name"] for d in interp.get_input_details()],
        "outputs": [d["name"] for d in interp.get_output_details()],
        "signatures": {
            k: {"inputs": sorted(v["inputs"]), "outputs": sorted(v["outputs"])}
            for k, v in interp.get_signature_list().items()
        },
    }

    (out / "facts.json").write_text(json.dumps(facts, indent=2))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: tf_make_models.py OUT_DIR")
    main(Path(sys.argv[1]))
