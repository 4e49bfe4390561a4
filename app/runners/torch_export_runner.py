"""torch.export programs (``.pt2``) on torch, CPU.

``torch.export.load`` deserializes the graph from JSON and the weights with weights-only
loading. The program's ``module()`` is called with the user inputs (``graph_signature.user_inputs``,
in order) rebuilt into the original call structure with the program's input tree spec. Outputs
are flattened in pytree order and named after the graph's user outputs (the names
``app.formats.torch_export`` reports), falling back to ``output_0``, … / dict keys."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from app.runners.base import IOSpec, Runner, Runtime
from app.runners.torchscript_runner import (
    default_threads,
    dtype_name,
    flatten_outputs,
    import_torch,
    pin_threads,
    pinned_info,
    to_arg,
    to_numpy,
    weights_precision,
)

RUNTIME = Runtime("torch", module="torch", hardware="cpu", packages=("torch",))


def _dim(d) -> int | str | None:
    if isinstance(d, int):  # a SymInt is no int: int() of it would give its example value
        return d
    return str(d) or None


def _spec(torch, name: str, val) -> IOSpec:
    if isinstance(val, torch.Tensor):
        return IOSpec(name, dtype_name(val.dtype), [_dim(d) for d in val.shape])
    if isinstance(val, bool):
        return IOSpec(name, "bool", [])
    if isinstance(val, int | torch.SymInt):
        return IOSpec(name, "int64", [])
    if isinstance(val, float | torch.SymFloat):
        return IOSpec(name, "float64", [])
    return IOSpec(name, None, None)


class TorchExportRunner(Runner):
    def __init__(self, path: Path, precision: str, threads: int | None, device: str = "cpu"):
        torch = import_torch()
        from torch.utils import _pytree

        self._torch, self._pytree = torch, _pytree
        self._device = None if device == "cpu" else device  # feeds are moved there (torch_cuda_runner)
        self._threads = threads or default_threads()
        pin_threads(torch, self._threads)
        ep = torch.export.load(str(path))
        move_module = False
        if self._device is not None:  # weights, constants and device arguments baked into the graph
            try:
                from torch.export.passes import move_to_device_pass
            except ImportError:  # torch < 2.6: the module's parameters and buffers, after module()
                move_module = True
            else:
                ep = move_to_device_pass(ep, self._device)
        sig = ep.graph_signature
        nodes = {n.name: n for n in ep.graph.nodes}
        vals = {n: nodes[n].meta.get("val") if n in nodes else None for n in sig.user_inputs}
        self._inputs = [_spec(torch, n, v) for n, v in vals.items()]
        self._scalars = {n for n, v in vals.items() if not isinstance(v, torch.Tensor)}
        out_node = next(n for n in ep.graph.nodes if n.op == "output")
        out_vals = {a.name: a.meta.get("val") for a in out_node.args[0] if hasattr(a, "name")}
        self._out_names = [n if isinstance(n, str) else None for n in sig.user_outputs]
        self._outputs = [_spec(torch, n, out_vals.get(n)) for n in self._out_names if n]
        self._in_spec = ep.call_spec.in_spec
        self._module = ep.module().to(self._device) if move_module else ep.module()
        stored = [*ep.state_dict.values(), *getattr(ep, "constants", {}).values()]
        model_precision, counts = weights_precision([t for t in stored if isinstance(t, torch.Tensor)])
        self.info = pinned_info(torch, precision, model_precision, counts, self._threads,
                                user_inputs=list(sig.user_inputs), user_outputs=list(sig.user_outputs))

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        missing = [s.name for s in self._inputs if s.name not in feeds]
        if missing:
            raise ValueError(f"missing inputs: {missing}")
        pin_threads(torch, self._threads)
        flat = [to_arg(torch, feeds[s.name], s.name in self._scalars, self._device) for s in self._inputs]
        if self._in_spec is not None:
            args, kwargs = self._pytree.tree_unflatten(flat, self._in_spec)
        else:
            args, kwargs = tuple(flat), {}
        with torch.inference_mode():
            out = self._module(*args, **kwargs)
        leaves = self._pytree.tree_leaves(out)
        if len(leaves) == len(self._out_names) and all(self._out_names):
            return {n: to_numpy(v) for n, v in zip(self._out_names, leaves, strict=True)}
        return {n: to_numpy(v) for n, v in flatten_outputs(out)}

    def close(self) -> None:
        self._module = None


def load(root: Path, paths: list[str], primary: str, *, precision: str = "fp32", threads: int | None = None,
         **kw) -> Runner:
    return TorchExportRunner(Path(root) / primary, precision, threads)
