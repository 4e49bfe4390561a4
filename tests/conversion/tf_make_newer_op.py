"""Write a SavedModel whose graph uses ``SegmentMaxV2``, an op TensorFlow 2.19 has and 2.12 does not.

Runs under the TF toolchain interpreter (``.venv-tf``)::

    .venv-tf/bin/python tests/conversion/tf_make_newer_op.py OUT_DIR
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


def main(out: str) -> None:
    import tensorflow as tf

    class SegmentMax(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([4, 3], tf.float32, name="x")])
        def serve(self, x):
            return {"y": tf.raw_ops.SegmentMaxV2(data=x, segment_ids=tf.constant([0, 0, 1, 1]), num_segments=2)}

    m = SegmentMax()
    tf.saved_model.save(m, out, signatures={"serving_default": m.serve})


if __name__ == "__main__":
    main(sys.argv[1])
