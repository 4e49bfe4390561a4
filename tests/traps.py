"""Generated ONNX graphs, each with a trap that random inputs at the generator's defaults fall into
(they run only on inputs a runnable-input search must find)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _save(graph, path: Path, opset: int = 17) -> Path:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def stride32_detector(path: Path) -> Path:
    """YOLO-style ``[batch, 3, height, width]``: five stride-2 convs, the last level upsampled x2
    and concatenated with the one before (an FPN). At 16x16 the levels are 1 and 1 (2 != 1 after the upsample); at
    any multiple of 32 they line up."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, prev, c_in = [], [], "images", 3
    for k in range(5):
        w = numpy_helper.from_array((rng.standard_normal((4, c_in, 3, 3)) * 0.3).astype(np.float32), f"w{k}")
        inits.append(w)
        nodes.append(helper.make_node("Conv", [prev, f"w{k}"], [f"c{k}"], strides=[2, 2], pads=[1, 1, 1, 1],
                                      kernel_shape=[3, 3]))
        nodes.append(helper.make_node("Relu", [f"c{k}"], [f"r{k}"]))
        prev, c_in = f"r{k}", 4
    inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"))
    nodes += [helper.make_node("Resize", ["r4", "", "scales"], ["up"], mode="nearest"),
              helper.make_node("Concat", ["up", "r3"], ["feat"], axis=1),
              helper.make_node("ReduceMean", ["feat"], ["score"], axes=[2, 3], keepdims=0)]
    graph = helper.make_graph(
        nodes, "stride32",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 8])], inits)
    return _save(graph, path)


def embedding_bound(path: Path) -> Path:
    """BERT-style ids through an embedding table of 30 rows and ``token_type_ids`` through one of
    2 rows: ids up to 16 are out of the second table."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    words = numpy_helper.from_array(rng.standard_normal((30, 8)).astype(np.float32), "word_embeddings")
    types = numpy_helper.from_array(rng.standard_normal((2, 8)).astype(np.float32), "token_type_embeddings")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["word_embeddings", "input_ids"], ["we"]),
         helper.make_node("Gather", ["token_type_embeddings", "token_type_ids"], ["te"]),
         helper.make_node("Add", ["we", "te"], ["h"]),
         helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
         helper.make_node("Unsqueeze", ["m", "ax"], ["m3"]),
         helper.make_node("Mul", ["h", "m3"], ["hidden"])],
        "embeddings",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
         for n in ("input_ids", "token_type_ids", "attention_mask")],
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "sequence", 8])],
        [words, types, numpy_helper.from_array(np.array([2], np.int64), "ax")])
    return _save(graph, path)


def min_length_audio(path: Path) -> Path:
    """An audio front end over ``[batch, samples]`` that frames the first 8000 samples into 100
    frames of 80: fewer samples cannot be framed."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Slice", ["audio", "starts", "ends", "axes"], ["head"]),
         helper.make_node("Reshape", ["head", "frame_shape"], ["frames"]),
         helper.make_node("ReduceMean", ["frames"], ["energy"], axes=[2], keepdims=0)],
        "audio",
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", "samples"])],
        [helper.make_tensor_value_info("energy", TensorProto.FLOAT, ["batch", 100])],
        [numpy_helper.from_array(np.array([0], np.int64), "starts"),
         numpy_helper.from_array(np.array([8000], np.int64), "ends"),
         numpy_helper.from_array(np.array([1], np.int64), "axes"),
         numpy_helper.from_array(np.array([-1, 100, 80], np.int64), "frame_shape")])
    return _save(graph, path)


def nan_on_large_ids(path: Path) -> Path:
    """``sqrt(1 - id)``: NaN for any id above 1, so random ids in [0, 16) give NaN outputs."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Cast", ["flags"], ["f"], to=TensorProto.FLOAT),
         helper.make_node("Sub", ["one", "f"], ["d"]),
         helper.make_node("Sqrt", ["d"], ["y"])],
        "nan_ids",
        [helper.make_tensor_value_info("flags", TensorProto.INT64, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(np.array(1.0, np.float32), "one")])
    return _save(graph, path)


def runs_nowhere(path: Path) -> Path:
    """A Reshape to a fixed 7 elements after a dynamic input: no generated size but 7 runs it, and 7
    is on no ladder."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Reshape", ["v", "shape"], ["y"])], "nowhere",
        [helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, "n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [7])],
        [numpy_helper.from_array(np.array([7], np.int64), "shape")])
    return _save(graph, path)


def fp16_overflow(path: Path) -> Path:
    """``x @ W``, then x1000 twice ("amplify", "amplify_more": past float16's 65504), then divided back
    by 1e6: fine in float32; in float16 "amplify_more" is the first tensor to turn into inf."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array((rng.standard_normal((8, 4)) * 0.5).astype(np.float32), "W"),
             numpy_helper.from_array(np.array(1e3, np.float32), "k"),
             numpy_helper.from_array(np.array(1e6, np.float32), "back")]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"], name="project"),
         helper.make_node("Mul", ["h", "k"], ["h1"], name="amplify"),
         helper.make_node("Mul", ["h1", "k"], ["h2"], name="amplify_more"),
         helper.make_node("Div", ["h2", "back"], ["y"], name="scale_back")],
        "overflow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], inits)
    return _save(graph, path)


def reflect_pad_signal(path: Path) -> Path:
    """``[batch, n]`` features reflect-padded by 40 on both sides: fewer than 41 values cannot be
    reflected (the default 16 fails); nothing in the names says how long ``n`` is."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Pad", ["features", "pads"], ["padded"], mode="reflect"),
         helper.make_node("ReduceMean", ["padded"], ["mean"], axes=[1], keepdims=0)],
        "reflect",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["batch"])],
        [numpy_helper.from_array(np.array([0, 40, 0, 40], np.int64), "pads")])
    return _save(graph, path)


def stft_frames(path: Path) -> Path:
    """An STFT with 400-sample frames over ``[batch, length]``: a 16-long sequence has no frame."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Unsqueeze", ["wave", "last"], ["w3"]),
         helper.make_node("STFT", ["w3", "step", "", "frame"], ["spec"], onesided=1),
         helper.make_node("ReduceSumSquare", ["spec"], ["power"], axes=[3], keepdims=0)],
        "stft",
        [helper.make_tensor_value_info("wave", TensorProto.FLOAT, ["batch", "length"])],
        [helper.make_tensor_value_info("power", TensorProto.FLOAT, ["batch", None, None])],
        [numpy_helper.from_array(np.array([-1], np.int64), "last"),
         numpy_helper.from_array(np.array(160, np.int64), "step"),
         numpy_helper.from_array(np.array(400, np.int64), "frame")])
    return _save(graph, path)
