"""Run a model on numpy inputs with each runtime the edges produce for, and compare outputs.

Every runner takes a list of float32/int numpy arrays (positional, in the model's input order)
and returns a list of float32 numpy arrays. Heavy libraries are imported inside functions."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _flat(x) -> list:
    import torch

    if isinstance(x, torch.Tensor):
        return [x.detach().float().numpy()]
    if isinstance(x, list | tuple):
        return [a for v in x for a in _flat(v)]
    if isinstance(x, dict):
        return [a for v in x.values() for a in _flat(v)]
    raise TypeError(type(x))


def torch_module(module, inputs: list[np.ndarray]) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        return _flat(module(*[torch.from_numpy(np.ascontiguousarray(a)) for a in inputs]))


def exported_program(path: Path, inputs: list[np.ndarray]) -> list[np.ndarray]:
    import torch

    return torch_module(torch.export.load(str(path)).module(), inputs)


def torchscript(path: Path, inputs: list[np.ndarray]) -> list[np.ndarray]:
    import torch

    return torch_module(torch.jit.load(str(path), map_location="cpu").eval(), inputs)


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}


def onnxruntime(path: Path, inputs: list[np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: a.astype(_ORT_TYPES.get(i.type, a.dtype)) for i, a in zip(sess.get_inputs(), inputs, strict=True)}
    return [np.asarray(o, dtype=np.float32) for o in sess.run(None, feed)]


def openvino(xml: Path, inputs: list[np.ndarray]) -> list[np.ndarray]:
    import openvino as ov

    core = ov.Core()
    # the CPU plugin runs in bf16 by default on CPUs with AMX/AVX512-BF16: compare in f32
    compiled = core.compile_model(core.read_model(str(xml)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    res = compiled(list(inputs))
    return [np.asarray(res[o], dtype=np.float32) for o in compiled.outputs]


def max_abs_err(ref: list[np.ndarray], got: list[np.ndarray]) -> float:
    assert len(ref) == len(got), f"{len(ref)} outputs vs {len(got)}"
    err = 0.0
    for a, b in zip(ref, got, strict=True):
        assert a.shape == b.shape, f"shape {a.shape} vs {b.shape}"
        err = max(err, float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0)
    return err


def scale(ref: list[np.ndarray]) -> float:
    """Magnitude of the reference outputs (for tolerances relative to it)."""
    return max(1.0, *(float(np.max(np.abs(a))) for a in ref if a.size))


def tflite(path: Path, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """LiteRT (ai-edge-litert, in the main venv), inputs resized to the batch given."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    details = it.get_input_details()
    for d, a in zip(details, inputs, strict=True):
        it.resize_tensor_input(d["index"], list(a.shape))
    it.allocate_tensors()
    for d, a in zip(details, inputs, strict=True):
        it.set_tensor(d["index"], a.astype(d["dtype"]))
    it.invoke()
    return [np.asarray(it.get_tensor(d["index"]), dtype=np.float32) for d in it.get_output_details()]
