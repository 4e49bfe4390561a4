"""Serialized TensorRT engines (plans) with the ``tensorrt`` Python API (TensorRT 10 tensor API)
and torch CUDA tensors as the device buffers (torch is in the gpu image already; no pycuda build).

An engine runs only where it was built for: the same TensorRT version and the same GPU model
(or, built hardware-compatible, any Ampere or later GPU). Before deserializing, the runner checks
this host (:func:`app.host.cuda_device`, the probe the build recorded, and ``tensorrt.__version__``)
against the engine's record (``model.engine.json``, written by the ONNX -> TensorRT edge) and
refuses a mismatch naming what differs, with the rebuild to ask for. A plan uploaded without a
record is checked on the TensorRT version its header carries (best effort).

Inputs outside the engine's optimisation profile are refused with the profile's range. An
engine fixes its precision when it is built, so ``precision`` is recorded as the caller names it.
Plans with an Ultralytics metadata header (4-byte length + JSON before the plan) are accepted.
This path has not run against a real TensorRT here: the checks are unit-tested against a fake
``tensorrt`` module, and ``scripts/gpu-check`` runs it for real."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from app.runners.base import IOSpec, Runner, RunnerInfo, RunnerUnavailable, Runtime

RUNTIME = Runtime("tensorrt", module="tensorrt", hardware="gpu", packages=("tensorrt", "tensorrt-cu12", "tensorrt-cu13"))

MAGIC = b"ftrt"
NO_DEVICE = "no CUDA device on this host (nvidia-smi finds none)"
REBUILD = ("rebuild the engine for this host: POST /v1/artifacts/{artifact_id}/rebuild re-runs the same conversion "
           "with the same options on the gpu queue")


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


def _triple(version: str | None) -> str | None:
    m = re.match(r"(\d+)\.(\d+)\.(\d+)", version or "")
    return ".".join(m.groups()) if m else None


def _cc(v: Any) -> tuple[int, int] | None:
    m = re.match(r"(\d+)\.(\d+)", str(v or ""))
    return (int(m.group(1)), int(m.group(2))) if m else None


def mismatch(record: dict[str, Any] | None, header_version: str | None, gpu: dict[str, Any],
             trt_version: str) -> tuple[list[str], list[str]]:
    """(what makes the engine unfit for this host, what could not be checked). ``record`` is the
    engine's build record (None for a plan without one), ``gpu`` this host's CUDA device 0."""
    problems: list[str] = []
    unchecked: list[str] = []
    if record is None:
        built = _triple(header_version)
        if built and built != _triple(trt_version):
            problems.append(f"TensorRT version: the plan's header says TensorRT {built}, this host has {trt_version}")
        unchecked.append("the GPU it was built for (no build record: the plan was not built by modelport)")
        if not built:
            unchecked.append("the TensorRT version (no record, and the header carries none)")
        return problems, unchecked
    built_trt = str(record.get("tensorrt_version") or "")
    if built_trt and built_trt != trt_version:
        problems.append(f"TensorRT version: the engine was built with TensorRT {built_trt}, this host has {trt_version}")
    want = record.get("gpu") or {}
    w_name, h_name = want.get("name"), gpu.get("name")
    w_cc, h_cc = _cc(want.get("compute_capability")), _cc(gpu.get("compute_capability"))
    compat = record.get("hardware_compatibility") or "none"
    if compat == "ampere_plus":
        if h_cc is None:
            unchecked.append(f"this GPU's compute capability (the driver does not report it; {h_name})")
        elif h_cc < (8, 0):
            problems.append(f"GPU compute capability: the engine is hardware-compatible with Ampere and later (8.0+), "
                            f"this host's GPU is {h_cc[0]}.{h_cc[1]} ({h_name})")
        return problems, unchecked
    if w_cc is None or h_cc is None:
        unchecked.append("the compute capability (" + ("not recorded" if w_cc is None else "this driver does not "
                         "report it") + ")")
    elif w_cc != h_cc:
        problems.append(f"GPU compute capability: the engine was built for {w_cc[0]}.{w_cc[1]} ({w_name}), this host's "
                        f"GPU is {h_cc[0]}.{h_cc[1]} ({h_name})")
    if w_name and h_name and w_name != h_name and not any(p.startswith("GPU compute") for p in problems):
        problems.append(f"GPU model: the engine was built on {w_name}, this host has {h_name} (TensorRT tunes an "
                        "engine's kernels for the GPU model that built it)")
    return problems, unchecked


def outside_profile(name: str, shape: tuple[int, ...], lo: tuple[int, ...], hi: tuple[int, ...]) -> str | None:
    """Why ``shape`` does not fit the profile range [lo, hi] of input ``name``, or None."""
    if len(shape) != len(lo):
        return f"input {name!r} has rank {len(shape)}; the engine takes rank {len(lo)}"
    bad = [j for j, (s, a, b) in enumerate(zip(shape, lo, hi, strict=True)) if not a <= s <= b]
    if not bad:
        return None
    rng = ", ".join(str(a) if a == b else f"{a}..{b}" for a, b in zip(lo, hi, strict=True))
    return (f"input {name!r} has shape {list(shape)}; the engine takes [{rng}] (its optimisation profile): "
            "convert again with a wider one (max_batch, shapes)")


def _modules():
    try:
        import tensorrt as trt
    except ImportError:
        raise RunnerUnavailable("TensorRT is not installed here") from None
    return trt


def _torch():
    try:
        import torch
    except ImportError:
        raise RunnerUnavailable("TensorRT needs a CUDA array library (torch with CUDA) to hold buffers") from None
    if not torch.cuda.is_available():
        raise RunnerUnavailable("TensorRT needs an NVIDIA GPU")
    return torch


def check_host(root: Path, paths: list[str], primary: str, trt_version: str) -> dict[str, Any]:
    """This host against the engine's record; :class:`RunnerUnavailable` naming every mismatch."""
    from app import host
    from app.formats.tensorrt import HEADER_BYTES, read_header, read_record

    gpu = host.cuda_device()
    if gpu is None:
        raise RunnerUnavailable(NO_DEVICE)
    record = read_record(root, paths, primary)
    header_version = None
    if record is None:
        plan, _ = _plan_bytes(Path(root) / primary)
        try:
            header_version = read_header(plan[:HEADER_BYTES]).get("tensorrt_version")
        except ValueError:
            header_version = None
    problems, unchecked = mismatch(record, header_version, gpu, trt_version)
    if problems:
        raise RunnerUnavailable("this TensorRT engine does not fit this host: " + "; ".join(problems) + ". " + REBUILD)
    return {"gpu": gpu, "record": record, "unchecked": unchecked}


class TensorRTRunner(Runner):
    def __init__(self, root: Path, paths: list[str], primary: str, precision: str, threads: int | None):
        trt = _modules()
        fit = check_host(root, paths, primary, str(trt.__version__))
        torch = _torch()
        self._trt, self._torch = trt, torch
        plan, meta = _plan_bytes(Path(root) / primary)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._engine = trt.Runtime(self._logger).deserialize_cuda_engine(plan)
        if self._engine is None:
            raise RunnerUnavailable("TensorRT could not deserialize the plan (built for another TensorRT "
                                    "version or GPU, or corrupted)")
        self._context = self._engine.create_execution_context()
        self._inputs, self._outputs = [], []
        self._profile: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name))).name
            shape = [int(d) if d >= 0 else None for d in self._engine.get_tensor_shape(name)]
            spec = IOSpec(name, dtype, shape)
            if self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self._inputs.append(spec)
                if None in shape:
                    lo, _, hi = self._engine.get_tensor_profile_shape(name, 0)
                    self._profile[name] = (tuple(int(d) for d in lo), tuple(int(d) for d in hi))
            else:
                self._outputs.append(spec)
        record = fit["record"] or {}
        self.info = RunnerInfo(runtime="tensorrt", version=trt.__version__, precision=precision, threads=threads,
                               device=f"cuda:{torch.cuda.current_device()}",
                               details={"gpu": fit["gpu"].get("name"),
                                        "compute_capability": fit["gpu"].get("compute_capability"),
                                        "built_for": record.get("gpu"), "built_precision": record.get("precision"),
                                        "unchecked": fit["unchecked"], "wrapper_metadata": meta,
                                        "profile": {k: {"min": list(a), "max": list(b)} for k, (a, b) in
                                                    self._profile.items()},
                                        "precision_note": "fixed when the engine was built"})

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        missing = [s.name for s in self._inputs if s.name not in feeds]
        if missing:
            raise ValueError(f"missing inputs: {missing}")
        keep = []
        for s in self._inputs:
            a = np.ascontiguousarray(np.asarray(feeds[s.name]).astype(s.dtype, casting="same_kind"))
            if s.name in self._profile:
                why = outside_profile(s.name, a.shape, *self._profile[s.name])
                if why:
                    raise ValueError(why)
            t = torch.from_numpy(a).cuda()
            keep.append(t)
            self._context.set_input_shape(s.name, tuple(a.shape))
            self._context.set_tensor_address(s.name, t.data_ptr())
        outs = {}
        for s in self._outputs:
            shape = tuple(self._context.get_tensor_shape(s.name))
            t = torch.empty(shape, dtype=getattr(torch, np.dtype(s.dtype).name), device="cuda")
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
    return TensorRTRunner(Path(root), list(paths), primary, precision, threads)
