"""Serialized TensorRT engines (plans) with the ``tensorrt`` Python API (TensorRT 10 tensor API)
and torch CUDA tensors as the device buffers.

An engine is built for one GPU model and TensorRT version and already fixes its precision, so
``precision`` is recorded as the caller names it (the builder's flags are not readable back).
This path is small and untested here: the test hosts have neither TensorRT nor an NVIDIA GPU,
and loading raises :class:`RunnerUnavailable` with the reason. Plans with an Ultralytics
metadata header (4-byte length + JSON before the plan) are accepted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from app.runners.base import IOSpec, Runner, RunnerInfo, RunnerUnavailable, Runtime

RUNTIME = Runtime("tensorrt", module="tensorrt", hardware="gpu", packages=("tensorrt", "tensorrt-cu12", "tensorrt-cu13"))

MAGIC = b"ftrt"


def _plan_bytes(path: Path) -> tuple[bytes, dict | None]:
    data = path.read_bytes()
    if data[:4] == MAGIC:
        return data, None
    n = int.from_bytes(data[:4], "little")
    if 0 < n < len(data) - 8 and data[4 + n:8 + n] == MAGIC:
        try:
            meta = json.loads(data[4:4 + n])
        except ValueError:
            meta = None
        return data[4 + n:], meta
    return data, None


def _modules():
    try:
        import tensorrt as trt
    except ImportError:
        raise RunnerUnavailable("TensorRT is not installed here") from None
    try:
        import torch
    except ImportError:
        raise RunnerUnavailable("TensorRT needs a CUDA array library (torch with CUDA) to hold buffers") from None
    if not torch.cuda.is_available():
        raise RunnerUnavailable("TensorRT needs an NVIDIA GPU")
    return trt, torch


class TensorRTRunner(Runner):
    def __init__(self, path: Path, precision: str, threads: int | None):
        trt, torch = _modules()
        self._trt, self._torch = trt, torch
        plan, meta = _plan_bytes(path)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._engine = trt.Runtime(self._logger).deserialize_cuda_engine(plan)
        if self._engine is None:
            raise RunnerUnavailable("TensorRT could not deserialize the plan (built for another TensorRT "
                                    "version or GPU?)")
        self._context = self._engine.create_execution_context()
        self._inputs, self._outputs = [], []
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name))).name
            shape = [int(d) if d >= 0 else None for d in self._engine.get_tensor_shape(name)]
            spec = IOSpec(name, dtype, shape)
            (self._inputs if self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
             else self._outputs).append(spec)
        self.info = RunnerInfo(runtime="tensorrt", version=trt.__version__, precision=precision, threads=threads,
                               device=f"cuda:{torch.cuda.current_device()}",
                               details={"gpu": torch.cuda.get_device_name(), "wrapper_metadata": meta,
                                        "precision_note": "fixed when the engine was built; as named by the caller"})

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        keep = []
        for s in self._inputs:
            a = np.ascontiguousarray(np.asarray(feeds[s.name]).astype(s.dtype, casting="same_kind"))
            t = torch.from_numpy(a).cuda()
            keep.append(t)
            self._context.set_input_shape(s.name, tuple(a.shape))
            self._context.set_tensor_address(s.name, t.data_ptr())
        outs = {}
        for s in self._outputs:
            shape = tuple(self._context.get_tensor_shape(s.name))
            t = torch.from_numpy(np.empty(shape, dtype=s.dtype)).cuda()
            outs[s.name] = t
            self._context.set_tensor_address(s.name, t.data_ptr())
        stream = torch.cuda.current_stream()  # the stream the input copies were queued on
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        stream.synchronize()
        return {k: v.cpu().numpy() for k, v in outs.items()}

    def close(self) -> None:
        self._context = None
        self._engine = None


def load(root: Path, paths: list[str], primary: str, *, precision: str = "fp32", threads: int | None = None,
         **kw) -> Runner:
    return TensorRTRunner(Path(root) / primary, precision, threads)
