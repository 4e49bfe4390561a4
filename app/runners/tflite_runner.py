"""TFLite flatbuffers on LiteRT (``ai_edge_litert``; ``tflite_runtime`` as a fallback), CPU.

Inputs and outputs are the interpreter's tensor details (``-1`` in ``shape_signature`` ->
``None``), named by the model's signature when it has exactly one that covers every input and
output (TF 2.5+ converters write one: ``x`` rather than ``serving_default_x:0``, and outputs get
their source names instead of ``StatefulPartitionedCall:0``); by tensor name otherwise. The same
rule names them in app.formats.tflite, so inspection, runner and the deployed signature agree. A feed whose shape differs from the tensor's
current one resizes it (dynamic batch) and re-allocates. Quantized models: a float feed for an
int8/uint8/int16 input with quantization parameters is quantized with that input's scale and
zero point, and then the quantized outputs of that call are dequantized to float32 (recorded in
``info.details['quantized_io']``); integer feeds go in unchanged and outputs stay integers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from app.runners.base import IOSpec, Runner, RunnerInfo, RunnerUnavailable, Runtime

RUNTIME = Runtime("litert", module="ai_edge_litert", hardware="cpu", packages=("ai-edge-litert", "tflite-runtime"),
                  also_in=("tf",))

_QUANT = {"int8", "uint8", "int16"}


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _interpreter_class():
    from importlib.metadata import PackageNotFoundError, version

    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "litert", version("ai-edge-litert")
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter

        try:
            v = version("tflite-runtime")
        except PackageNotFoundError:
            v = "unknown"
        return Interpreter, "tflite_runtime", v
    except ImportError:
        raise RunnerUnavailable("no TFLite runtime is installed here (ai-edge-litert or tflite-runtime)") from None


def _quant(d) -> tuple[float, int] | None:
    """Per-tensor (scale, zero point) of a quantized integer I/O tensor."""
    scale, zp = d.get("quantization", (0.0, 0))
    if np.dtype(d["dtype"]).name in _QUANT and scale:
        return float(scale), int(zp)
    return None


def _quantized(t) -> bool:
    """Quantized integer tensor, per-tensor or per-channel."""
    qp = t.get("quantization_parameters") or {}
    scales = qp.get("scales")
    return np.dtype(t["dtype"]).name in _QUANT and (bool(t.get("quantization", (0.0, 0))[0]) or
                                                      (scales is not None and len(scales) > 0))


def _quantization_kind(it, tensors) -> str:
    """none | full_integer (activations are quantized integers) | dynamic_range (only weights are)."""
    quant = {t["index"] for t in tensors if _quantized(t)}
    if not quant:
        return "none"
    try:
        produced = {int(i) for op in it._get_ops_details() for i in op["outputs"]}
    except Exception:  # private API gone: judge by the I/O tensors
        produced = {d["index"] for d in it.get_output_details()}
    return "full_integer" if quant & produced else "dynamic_range"


def _spec(d) -> IOSpec:
    sig = d.get("shape_signature")
    if sig is None or (len(sig) == 0 and len(d["shape"]) > 0):
        sig = d["shape"]
    return IOSpec(d["name"], np.dtype(d["dtype"]).name, [int(x) if x >= 0 else None for x in sig])


def signature_names(it, inputs: list[dict], outputs: list[dict]) -> tuple[dict[int, str], dict[int, str]] | None:
    """Tensor index -> signature name for the inputs and outputs, from the model's only signature
    when it maps exactly these tensors under distinct names; None otherwise."""
    try:
        sigs = it._get_full_signature_list()
    except Exception:  # private API gone, or no signatures: tensor names then
        return None
    if not isinstance(sigs, dict) or len(sigs) != 1:
        return None
    (sig,) = sigs.values()
    ins = {int(i): str(n) for n, i in (sig.get("inputs") or {}).items()}
    outs = {int(i): str(n) for n, i in (sig.get("outputs") or {}).items()}
    if set(ins) != {d["index"] for d in inputs} or set(outs) != {d["index"] for d in outputs}:
        return None
    if len(set(ins.values()) | set(outs.values())) != len(ins) + len(outs):
        return None
    return ins, outs


class TfliteRunner(Runner):
    def __init__(self, path: Path, precision: str, threads: int | None):
        cls, runtime, version = _interpreter_class()
        n = threads or default_threads()
        self._it = cls(model_path=str(path), num_threads=n)
        self._it.allocate_tensors()
        self._in = self._it.get_input_details()
        self._out = self._it.get_output_details()
        names = signature_names(self._it, self._in, self._out)
        if names is not None:  # index-addressed below; only what callers see is renamed
            self._in = [{**d, "name": names[0][d["index"]]} for d in self._in]
            self._out = [{**d, "name": names[1][d["index"]]} for d in self._out]
        self._inputs = [_spec(d) for d in self._in]
        self._outputs = [_spec(d) for d in self._out]
        self._in_q = {d["name"]: _quant(d) for d in self._in}
        self._out_q = {d["name"]: _quant(d) for d in self._out}
        tensors = self._it.get_tensor_details()
        counts: dict[str, int] = {}
        for t in tensors:
            name = np.dtype(t["dtype"]).name
            counts[name] = counts.get(name, 0) + 1
        kind = _quantization_kind(self._it, tensors)
        # dynamic_range: int8 weights, activations quantized on the fly by the hybrid/qd8 kernels
        model_precision = "fp32" if kind == "none" else "int8"
        details = {
            "tensor_dtypes": counts,
            "quantization": kind,
            "quantized_tensors": sum(1 for t in tensors if _quantized(t)),
            "quantized_io": {
                "inputs": {k: {"scale": q[0], "zero_point": q[1]} for k, q in self._in_q.items() if q},
                "outputs": {k: {"scale": q[0], "zero_point": q[1]} for k, q in self._out_q.items() if q},
                "policy": "float32 feeds to quantized inputs are quantized (round, clip) and that call's "
                          "quantized outputs dequantized to float32; integer feeds pass unchanged",
            },
        }
        if precision != model_precision:
            details["requested_precision"] = precision
            details["note"] = f"LiteRT runs the model as stored ({model_precision}); requested {precision} not applied"
        self.info = RunnerInfo(runtime=runtime, version=version, precision=model_precision, threads=n,
                               details=details)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [d["name"] for d in self._in if d["name"] not in feeds]
        if missing:
            raise ValueError(f"missing inputs: {missing}")
        arrays, quantized = [], False
        for d in self._in:
            a = np.asarray(feeds[d["name"]])
            want = np.dtype(d["dtype"])
            q = self._in_q[d["name"]]
            if q and np.issubdtype(a.dtype, np.floating):
                info = np.iinfo(want)
                a = np.clip(np.round(a.astype(np.float64) / q[0]) + q[1], info.min, info.max).astype(want)
                quantized = True
            elif a.dtype != want:
                a = a.astype(want, casting="same_kind")
            arrays.append(a)
        current = self._it.get_input_details()
        resized = False
        for d, cur, a in zip(self._in, current, arrays, strict=True):
            if tuple(cur["shape"]) != a.shape:
                self._it.resize_tensor_input(d["index"], list(a.shape))
                resized = True
        if resized:
            self._it.allocate_tensors()
        for d, a in zip(self._in, arrays, strict=True):
            self._it.set_tensor(d["index"], np.ascontiguousarray(a))
        self._it.invoke()
        out = {}
        for d in self._out:
            r = self._it.get_tensor(d["index"])
            q = self._out_q[d["name"]]
            if quantized and q:
                r = ((r.astype(np.float32) - q[1]) * q[0]).astype(np.float32)
            out[d["name"]] = r
        return out

    def close(self) -> None:
        self._it = None


def load(root: Path, paths: list[str], primary: str, *, precision: str = "fp32", threads: int | None = None,
         **kw) -> Runner:
    return TfliteRunner(Path(root) / primary, precision, threads)
