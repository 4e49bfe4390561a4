"""ONNX models on ONNX Runtime's CPU execution provider.

The session is loaded from the file path, so external data files next to the model are found.
ONNX Runtime computes in the model's own float types (it never lowers fp32 on CPU): the recorded
precision is the model's float dtype, read from its inputs, outputs and initializers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from app.runners.base import IOSpec, Runner, RunnerInfo, RunnerUnavailable, Runtime

RUNTIME = Runtime("onnxruntime", module="onnxruntime", hardware="cpu", packages=("onnxruntime", "onnxruntime-gpu"),
                  also_in=("tf",))  # onnx2tf brings it into the TF toolchain

_TYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(bfloat16)": "bfloat16", "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16",
    "tensor(uint16)": "uint16", "tensor(int32)": "int32", "tensor(uint32)": "uint32", "tensor(int64)": "int64",
    "tensor(uint64)": "uint64", "tensor(bool)": "bool", "tensor(string)": "object",
}
# onnx.TensorProto data types of initializers -> precision names
_ONNX_FLOATS = {1: "fp32", 10: "fp16", 11: "fp64", 16: "bf16"}
_PRECISION = {"float32": "fp32", "float16": "fp16", "float64": "fp64", "bfloat16": "bf16"}


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _dim(d) -> int | str | None:
    if isinstance(d, int) and d >= 0:
        return d
    return d if isinstance(d, str) and d else None


def _spec(arg) -> IOSpec:
    shape = arg.shape if isinstance(arg.shape, list | tuple) else []
    return IOSpec(arg.name, _TYPES.get(arg.type, arg.type), [_dim(d) for d in shape])


def _cast_to(dtype: str) -> np.dtype | None:
    """The numpy dtype an input's arrays are cast to (same kind only), or None: taken as sent
    (bfloat16, strings, and types numpy has no name for, which onnxruntime judges itself)."""
    if dtype in ("bfloat16", "object"):
        return None
    try:
        return np.dtype(dtype)
    except TypeError:
        return None


def _model_precision(path: Path, io: list[IOSpec]) -> tuple[str, dict[str, int]]:
    """The float type the model computes in: its initializers' float dtypes (headers only, external
    data not loaded), else its float inputs/outputs."""
    counts: dict[str, int] = {}
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        for t in model.graph.initializer:
            name = _ONNX_FLOATS.get(t.data_type)
            if name:
                counts[name] = counts.get(name, 0) + 1
    except Exception:  # onnx missing or the header unreadable: fall back to the I/O types
        counts = {}
    if not counts:
        for s in io:
            name = _PRECISION.get(s.dtype)
            if name:
                counts[name] = counts.get(name, 0) + 1
    if not counts:
        return "fp32", counts
    return max(counts, key=lambda k: counts[k]), counts


class OnnxRuntimeRunner(Runner):
    def __init__(self, path: Path, precision: str, threads: int | None, providers: list[str] | None = None):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise RunnerUnavailable(f"onnxruntime is not installed here ({e})") from None
        n = threads or default_threads()
        so = ort.SessionOptions()
        so.intra_op_num_threads = n
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        providers = providers or ["CPUExecutionProvider"]
        self._sess = ort.InferenceSession(str(path), sess_options=so, providers=providers)
        self._plan = None
        self._inputs = [_spec(a) for a in self._sess.get_inputs()]
        self._outputs = [_spec(a) for a in self._sess.get_outputs()]
        model_precision, counts = _model_precision(path, self._inputs + self._outputs)
        details = {"providers": self._sess.get_providers(), "execution_mode": "sequential",
                   "inter_op_threads": 1, "float_initializers": counts}
        if precision != model_precision:
            details["requested_precision"] = precision
            details["note"] = (f"ONNX Runtime runs the model as stored ({model_precision}); "
                               f"requested {precision} was not applied")
        self.info = RunnerInfo(runtime="onnxruntime", version=ort.__version__, precision=model_precision,
                               threads=n, details=details)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        plan = self._plan
        if plan is None:  # read once: on the serving path a dtype's name costs more than the check
            plan = self._plan = ([(s.name, _cast_to(s.dtype)) for s in self._inputs], [s.name for s in self._outputs])
        wants, names = plan
        missing = [n for n, _ in wants if n not in feeds]
        if missing:
            raise ValueError(f"missing inputs: {missing}")
        feed = {}
        for n, want in wants:
            a = np.asarray(feeds[n])
            if want is not None and a.dtype != want:
                a = a.astype(want, casting="same_kind")
            feed[n] = a
        res = self._sess.run(names, feed)
        return {n: np.asarray(r) for n, r in zip(names, res, strict=True)}

    def close(self) -> None:
        self._sess = None


def load(root: Path, paths: list[str], primary: str, *, precision: str = "fp32", threads: int | None = None,
         **kw) -> Runner:
    return OnnxRuntimeRunner(Path(root) / primary, precision, threads, kw.get("providers"))
