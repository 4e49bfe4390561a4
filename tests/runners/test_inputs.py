"""The one input generator and the one rule for dynamic dimensions (validation, benchmark and
serving used to disagree on whether a size-0 dim is dynamic)."""

from __future__ import annotations

import numpy as np
import pytest

from app.runners.base import IOSpec
from app.runners.inputs import OTHER_DIM, default_inputs, input_shape, is_dynamic, make_inputs
from app.serving import codec


@pytest.mark.parametrize("dim, dynamic", [(None, True), ("batch", True), (-1, True), (0, False), (3, False)])
def test_one_rule_for_dynamic_dims(dim, dynamic):
    assert is_dynamic(dim) is dynamic


def test_validation_benchmark_and_serving_read_a_zero_dim_alike():
    spec = IOSpec("x", "float32", [None, 0, "seq", 3])
    assert input_shape(spec, 4) == [4, 0, OTHER_DIM, 3]
    assert default_inputs([spec], 4)["x"].shape == (4, 0, OTHER_DIM, 3)
    (label1, one), (label3, three) = make_inputs([spec])
    assert (label1, one["x"].shape) == ("batch=1", (1, 0, OTHER_DIM, 3))
    assert (label3, three["x"].shape) == ("batch=3", (3, 0, OTHER_DIM, 3))
    # serving refuses a non-empty tensor where the model has a fixed empty dim
    codec.check_inputs({"x": np.zeros((2, 0, 5, 3), np.float32)}, [("x", "float32", spec.shape)])
    with pytest.raises(codec.CodecError, match="x"):
        codec.check_inputs({"x": np.zeros((2, 1, 5, 3), np.float32)}, [("x", "float32", spec.shape)])


def test_integer_inputs_are_small_and_uint8_spans_its_range():
    feeds = default_inputs([IOSpec("ids", "int64", [None, 8]), IOSpec("img", "uint8", [1, 64, 64])], 2)
    assert feeds["ids"].dtype == np.int64 and feeds["ids"].min() >= 0 and feeds["ids"].max() < 16
    assert feeds["img"].max() > 16
