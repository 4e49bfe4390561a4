"""TorchScript archives (``torch.jit.save``) on torch, CPU.

``torch.jit.load`` runs TorchScript (a restricted language interpreted by torch), not Python
pickles of arbitrary classes, so loading an uploaded archive is acceptable. Inputs are the
``forward`` schema's arguments after ``self``; TorchScript records no dtypes or shapes for tensor
arguments, so those are ``None`` (see ``inputs()``). Outputs are flattened: a tensor or a
tuple/list (nested too) gives ``output_0``, ``output_1``, …; a dict gives its keys.

The helpers here are shared with :mod:`app.runners.torch_export_runner`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from app.runners.base import IOSpec, Runner, RunnerInfo, RunnerUnavailable, Runtime

RUNTIME = Runtime("torch", module="torch", hardware="cpu", packages=("torch",))

_PRECISION = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64"}
_SCALAR_TYPES = {"int": "int64", "float": "float64", "bool": "bool"}


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def import_torch():
    try:
        import torch
    except ImportError as e:
        raise RunnerUnavailable(f"torch is not installed here ({e})") from None
    return torch


def dtype_name(dt) -> str:
    return str(dt).removeprefix("torch.")


def pin_threads(torch, threads: int) -> None:
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def weights_precision(tensors) -> tuple[str, dict[str, int]]:
    """The float dtype most parameters/buffers are stored in (fp32 when there are none)."""
    counts: dict[str, int] = {}
    for t in tensors:
        name = _PRECISION.get(dtype_name(t.dtype))
        if name:
            counts[name] = counts.get(name, 0) + t.numel()
    return (max(counts, key=lambda k: counts[k]) if counts else "fp32"), counts


def to_numpy(t) -> np.ndarray:
    import torch

    if isinstance(t, torch.Tensor):
        t = t.detach().cpu()
        if t.dtype == torch.bfloat16:  # numpy has no bfloat16
            t = t.float()
        return t.contiguous().numpy().copy()
    return np.asarray(t)


def flatten_outputs(out: Any) -> list[tuple[str, Any]]:
    """(name, leaf) pairs: tensor/tuple/list -> output_0.., dict -> its keys (nested: key.0, key.sub)."""
    leaves: list[tuple[str, Any]] = []

    def walk(x, path: str | None) -> None:
        if isinstance(x, dict):
            for k, v in x.items():
                walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(x, list | tuple):
            for i, v in enumerate(x):
                walk(v, f"{path}.{i}" if path else None)
        elif x is not None:
            leaves.append((path or f"output_{len(leaves)}", x))

    walk(out, None)
    return leaves


def to_arg(torch, a, scalar: bool, device: str | None = None):
    """A feed as the program wants it: a tensor (on ``device``, when given), or a Python number for a
    scalar (int/float/bool) argument."""
    if scalar:
        return a.item() if isinstance(a, np.ndarray | np.generic | torch.Tensor) else a
    t = a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(np.asarray(a)))
    return t.to(device) if device is not None else t


def pinned_info(torch, precision: str, model_precision: str, counts: dict[str, int], threads: int,
                **details: Any) -> RunnerInfo:
    details = {**details, "stored_weight_elements": counts,
               "float32_matmul_precision": torch.get_float32_matmul_precision()}
    if precision != model_precision:
        details["requested_precision"] = precision
        details["note"] = f"torch runs the program as stored ({model_precision}); requested {precision} not applied"
    return RunnerInfo(runtime="torch", version=torch.__version__, precision=model_precision, threads=threads,
                      details=details)


class TorchScriptRunner(Runner):
    def __init__(self, path: Path, precision: str, threads: int | None, device: str = "cpu"):
        torch = import_torch()
        self._torch = torch
        self._device = None if device == "cpu" else device  # feeds are moved there (torch_cuda_runner)
        self._threads = threads or default_threads()
        pin_threads(torch, self._threads)
        self._module = torch.jit.load(str(path), map_location=device).eval()
        schema = self._module.forward.schema
        self._inputs = []
        for a in schema.arguments[1:]:
            kind = a.type.kind()
            if kind == "TensorType":
                self._inputs.append(IOSpec(a.name, None, None))  # not recorded by TorchScript
            else:
                self._inputs.append(IOSpec(a.name, _SCALAR_TYPES.get(str(a.type), str(a.type)), []))
        self._outputs = self._declared_outputs(schema)
        model_precision, counts = weights_precision([*self._module.parameters(), *self._module.buffers()])
        self.info = pinned_info(torch, precision, model_precision, counts, self._threads,
                                schema=str(schema), io_types="TorchScript records no tensor dtypes/shapes")

    @staticmethod
    def _declared_outputs(schema) -> list[IOSpec]:
        if len(schema.returns) != 1:
            return []
        t = schema.returns[0].type
        if t.kind() == "TensorType":
            return [IOSpec("output_0", None, None)]
        if t.kind() == "TupleType" and all(e.kind() == "TensorType" for e in t.elements()):
            return [IOSpec(f"output_{i}", None, None) for i in range(len(t.elements()))]
        return []  # lists/dicts: known after the first run

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        missing = [s.name for s in self._inputs if s.name not in feeds]
        if missing:
            raise ValueError(f"missing inputs: {missing}")
        pin_threads(torch, self._threads)
        args = [to_arg(torch, feeds[s.name], s.dtype is not None, self._device) for s in self._inputs]
        with torch.inference_mode():
            out = self._module(*args)
        leaves = flatten_outputs(out)
        result = {name: to_numpy(v) for name, v in leaves}
        if not self._outputs:
            self._outputs = [IOSpec(n, None, None) for n in result]
        return result

    def close(self) -> None:
        self._module = None


def load(root: Path, paths: list[str], primary: str, *, precision: str = "fp32", threads: int | None = None,
         **kw) -> Runner:
    return TorchScriptRunner(Path(root) / primary, precision, threads)
