"""OpenVINO IR (model.xml + model.bin) on the OpenVINO CPU plugin.

The inference precision is always pinned: the CPU plugin otherwise picks bf16 by itself on CPUs
with AVX512-BF16/AMX, so an fp32 artifact would silently run in bf16. ``precision`` maps to
``INFERENCE_PRECISION_HINT`` (fp32 -> f32, fp16 -> f16, bf16 -> bf16; int8 -> f32: an
int8-weight-compressed IR still computes in f32, its weights are decompressed on the fly). The
precision the compiled model reports back is what gets recorded; when the CPU cannot honour the
hint (no bf16/fp16 arithmetic), ``info.precision`` says what it actually got."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from app.runners.base import IOSpec, Runner, RunnerInfo, RunnerUnavailable, Runtime

RUNTIME = Runtime("openvino", module="openvino", hardware="intel", packages=("openvino",))

HINTS = {"fp32": "f32", "fp16": "f16", "bf16": "bf16", "int8": "f32"}
_BACK = {"f32": "fp32", "f16": "fp16", "bf16": "bf16"}
_LOW_BIT = {"i8", "u8", "i4", "u4", "nf4", "f8e4m3", "f8e5m2"}


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _dtype(t) -> str:
    name = t.get_type_name()
    if name == "bf16":
        return "bfloat16"
    try:
        return np.dtype(t.to_dtype()).name
    except Exception:
        return name


def _shape(ps) -> list[int | str | None]:
    if ps.rank.is_dynamic:
        return []
    return [d.get_length() if d.is_static else None for d in ps]


def _name(port, i: int, prefix: str) -> str:
    names = sorted(port.get_names())
    if not names:
        return f"{prefix}_{i}"
    try:
        return port.get_any_name()
    except RuntimeError:
        return names[0]


def _bin_for(root: Path, paths: list[str], primary: str) -> Path | None:
    if not primary.lower().endswith(".xml"):
        return None
    stem = primary[:-4]
    bins = [p for p in paths if p.lower().endswith(".bin")]
    same = [p for p in bins if p[:-4] == stem]
    pick = same or (bins if len(bins) == 1 else [])
    return root / pick[0] if pick else None


class OpenVinoRunner(Runner):
    def __init__(self, root: Path, paths: list[str], primary: str, precision: str, threads: int | None,
                 device: str = "CPU"):
        try:
            import openvino as ov
        except ImportError as e:
            raise RunnerUnavailable(f"openvino is not installed here ({e})") from None
        if precision not in HINTS:
            raise ValueError(f"precision must be one of {sorted(HINTS)}, not {precision!r}")
        n = threads or default_threads()
        core = ov.Core()
        xml = root / primary
        weights = _bin_for(root, paths, primary)
        model = core.read_model(str(xml), str(weights)) if weights else core.read_model(str(xml))
        weight_types: dict[str, int] = {}
        for op in model.get_ops():
            if op.get_type_name() == "Constant":
                t = op.get_output_element_type(0).get_type_name()
                weight_types[t] = weight_types.get(t, 0) + 1
        hint = HINTS[precision]
        config = {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": n}
        self._compiled = core.compile_model(model, device, config)
        self._request = self._compiled.create_infer_request()
        got = self._compiled.get_property("INFERENCE_PRECISION_HINT")
        got_name = got.get_type_name() if hasattr(got, "get_type_name") else str(got)
        actual = _BACK.get(got_name, got_name)
        # int8-compressed IR: compute in f32, int8 weights; recorded as the caller named it
        recorded = precision if (precision == "int8" and actual == "fp32") else actual
        try:
            got_threads = int(self._compiled.get_property("INFERENCE_NUM_THREADS"))
        except Exception:
            got_threads = None
        self._inputs = [IOSpec(_name(p, i, "input"), _dtype(p.get_element_type()), _shape(p.get_partial_shape()))
                        for i, p in enumerate(self._compiled.inputs)]
        self._outputs = [IOSpec(_name(p, i, "output"), _dtype(p.get_element_type()),
                                _shape(p.get_partial_shape())) for i, p in enumerate(self._compiled.outputs)]
        details = {"inference_precision_hint": hint, "compiled_inference_precision": got_name,
                   "requested_precision": precision, "weight_types": weight_types,
                   "runtime_threads": got_threads, "device_name": device}
        if precision == "int8":
            low = sorted(set(weight_types) & _LOW_BIT)
            details["note"] = (f"int8: computes in {got_name} with low-bit weights {low}" if low else
                               f"int8 requested but the IR has no low-bit weights: computes in {got_name}")
        elif actual != precision:
            details["note"] = f"requested {precision}, the {device} plugin compiled for {got_name}"
        self.info = RunnerInfo(runtime="openvino", version=ov.get_version(), precision=recorded, threads=n,
                               device=device.lower(), details=details)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [s.name for s in self._inputs if s.name not in feeds]
        if missing:
            raise ValueError(f"missing inputs: {missing}")
        args = []
        for s in self._inputs:
            a = np.asarray(feeds[s.name])
            if s.dtype != "bfloat16" and a.dtype.name != s.dtype:
                a = a.astype(s.dtype, casting="same_kind")
            args.append(np.ascontiguousarray(a))
        res = self._request.infer(args, share_inputs=False, share_outputs=False)
        return {s.name: np.array(res[port]) for s, port in zip(self._outputs, self._compiled.outputs, strict=True)}

    def close(self) -> None:
        self._request = None
        self._compiled = None


def load(root: Path, paths: list[str], primary: str, *, precision: str = "fp32", threads: int | None = None,
         **kw) -> Runner:
    return OpenVinoRunner(Path(root), paths, primary, precision, threads, kw.get("device", "CPU"))
