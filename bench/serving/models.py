"""The two benchmark models, built with onnx.helper from a fixed seed (same bytes every run).

* ``cnn``: x[N,3,64,64] -> conv 3->16 k3 s1 p1 + relu -> conv 16->40 k3 s2 p1 + relu
  -> conv 40->40 k3 s2 p1 + relu -> global avg pool -> flatten -> linear 40->10 -> y[N,10].
  About 22.7 MFLOP per sample (2 x multiply-accumulates of the convs and the linear).
* ``mlp``: x[N,16] -> linear 16->64 + relu -> linear 64->4 -> y[N,4].

Both have a dynamic batch dimension ``N``; input ``x`` and output ``y``, float32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
CNN_CONVS = [(3, 16, 1), (16, 40, 2), (40, 40, 2)]  # (in, out, stride), k=3, pad=1
CNN_CLASSES = 10
HW = 64


def cnn_flops(hw: int = HW) -> float:
    """FLOPs per sample (2 x MACs; bias, relu and pooling not counted)."""
    macs, size = 0, hw
    for cin, cout, stride in CNN_CONVS:
        size = (size + 2 - 3) // stride + 1
        macs += size * size * cout * cin * 9
    macs += CNN_CONVS[-1][1] * CNN_CLASSES
    return 2.0 * macs


def mlp_flops() -> float:
    return 2.0 * (16 * 64 + 64 * 4)


def _w(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def build_cnn() -> onnx.ModelProto:
    rng = np.random.default_rng(20261126)
    nodes, inits = [], []
    prev = "x"
    for i, (cin, cout, stride) in enumerate(CNN_CONVS):
        inits += [numpy_helper.from_array(_w(rng, (cout, cin, 3, 3), cin * 9), f"conv{i}.w"),
                  numpy_helper.from_array((rng.standard_normal(cout) * 0.01).astype(np.float32), f"conv{i}.b")]
        nodes += [helper.make_node("Conv", [prev, f"conv{i}.w", f"conv{i}.b"], [f"c{i}"], kernel_shape=[3, 3],
                                   strides=[stride, stride], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        prev = f"r{i}"
    feat = CNN_CONVS[-1][1]
    inits += [numpy_helper.from_array(_w(rng, (feat, CNN_CLASSES), feat), "fc.w"),
              numpy_helper.from_array(np.zeros(CNN_CLASSES, np.float32), "fc.b")]
    nodes += [helper.make_node("GlobalAveragePool", [prev], ["gap"]),
              helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
              helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["y"])]
    graph = helper.make_graph(nodes, "bench_cnn",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, HW, HW])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", CNN_CLASSES])], inits)
    return _finish(graph)


def build_mlp() -> onnx.ModelProto:
    rng = np.random.default_rng(16644)
    inits = [numpy_helper.from_array(_w(rng, (16, 64), 16), "fc1.w"),
             numpy_helper.from_array(np.zeros(64, np.float32), "fc1.b"),
             numpy_helper.from_array(_w(rng, (64, 4), 64), "fc2.w"),
             numpy_helper.from_array(np.zeros(4, np.float32), "fc2.b")]
    nodes = [helper.make_node("Gemm", ["x", "fc1.w", "fc1.b"], ["h"]),
             helper.make_node("Relu", ["h"], ["hr"]),
             helper.make_node("Gemm", ["hr", "fc2.w", "fc2.b"], ["y"])]
    graph = helper.make_graph(nodes, "bench_mlp",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)
    return _finish(graph)


def _finish(graph: onnx.GraphProto) -> onnx.ModelProto:
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="modelport-bench")
    m.ir_version = 8  # readable by any onnxruntime >= 1.10
    onnx.checker.check_model(m, full_check=True)
    return m


MODELS = {"cnn": build_cnn, "mlp": build_mlp}
INPUT_SHAPE = {"cnn": (3, HW, HW), "mlp": (16,)}
OUTPUT_SHAPE = {"cnn": (CNN_CLASSES,), "mlp": (4,)}


def write_models(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, build in MODELS.items():
        p = folder / f"{name}.onnx"
        p.write_bytes(build().SerializeToString())
        out[name] = p
    return out


def sample_input(name: str, rows: int = 1) -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.standard_normal((rows, *INPUT_SHAPE[name])).astype(np.float32)


if __name__ == "__main__":
    import sys
    import tempfile

    d = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())
    for n, p in write_models(d).items():
        print(n, p, p.stat().st_size, "bytes")
    print(f"cnn: {cnn_flops() / 1e6:.2f} MFLOP/sample; mlp: {mlp_flops() / 1e3:.2f} kFLOP/sample")
