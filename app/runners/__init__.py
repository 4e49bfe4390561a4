"""Runners: load a model file set and run it on numpy arrays, one module per runtime.

Each runner module declares ``RUNTIME`` (a :class:`Runtime`: its name, the Python module it needs,
the hardware queue whose hosts run it, its toolchain, the precision it pins) and a function
``load(root, paths, primary, *, precision, threads, fmt, **kw) -> Runner``. A format names its
runner in its ``FormatInfo``; everything else asks this module. A runner that cannot run on this
host raises :class:`RunnerUnavailable` with the reason (e.g. "Core ML prediction needs macOS").
Heavy imports stay inside the runner modules' functions."""

from __future__ import annotations

import importlib
from functools import cache
from pathlib import Path
from types import ModuleType

from app import formats
from app.runners.base import HARDWARE_NEEDS, Runner, RunnerUnavailable, Runtime

DEFAULT_QUEUE = "cpu"
"""Where a format without a runtime is handled (weights-only formats are measured on load there)."""


@cache
def _import(entry: str) -> ModuleType:
    return importlib.import_module(entry if "." in entry else f"app.runners.{entry}")


def runner_module(fmt: str) -> ModuleType | None:
    info = formats.find(fmt)
    return _import(info.runner) if info is not None and info.runner else None


def runtime_of(fmt: str) -> Runtime | None:
    """The runtime that runs ``fmt``, or None (weights only, refused, unknown)."""
    m = runner_module(fmt)
    return getattr(m, "RUNTIME", None) if m is not None else None


def runnable(fmt: str) -> bool:
    """A runner exists for it (on some host): it can be served, validated and benchmarked."""
    return runtime_of(fmt) is not None


def weights_only(fmt: str) -> bool:
    info = formats.find(fmt)
    return bool(info and info.weights_only)


def queue_for(fmt: str) -> str:
    """The queue on which an artifact of ``fmt`` is validated and benchmarked."""
    rt = runtime_of(fmt)
    return rt.queue if rt is not None else DEFAULT_QUEUE


def toolchain_for(fmt: str) -> str:
    rt = runtime_of(fmt)
    return rt.toolchain if rt is not None else "main"


def check_placement(candidate: str, reference: str | None = None) -> tuple[str, str]:
    """(queue, toolchain) of a step that runs ``candidate`` (and, to validate it, ``reference``):
    a runtime outside the main toolchain decides, because only its interpreter has it (a TensorFlow
    upload is the reference of its TFLite artifact: both run under the TF toolchain, whose LiteRT
    runs TFLite too); otherwise the candidate's hardware does."""
    for fmt in (reference, candidate):
        if fmt is not None and toolchain_for(fmt) != "main":
            return queue_for(fmt), toolchain_for(fmt)
    return queue_for(candidate), "main"


def together(candidate: str, reference: str) -> bool:
    """Whether one interpreter runs both (so the reference can be compared with the candidate):
    a TensorFlow upload with its TFLite or ONNX artifact, yes (the TF toolchain has LiteRT and ONNX
    Runtime); with an OpenVINO artifact, no."""
    a, b = runtime_of(candidate), runtime_of(reference)
    if a is None or b is None:
        return True  # weights only on either side: compared as tensors, no runtime
    return bool(a.toolchains & b.toolchains)


def runtimes() -> dict[str, Runtime]:
    """Every declared runtime, by runner module."""
    out = {}
    for f in formats.all_formats():
        if f.runner:
            out[f.runner] = _import(f.runner).RUNTIME
    return out


def open_runner(fmt: str, root: Path, paths: list[str], primary: str, *, precision: str = "fp32",
                threads: int | None = None, **kw) -> Runner:
    if weights_only(fmt):
        raise RunnerUnavailable(f"{fmt} holds weights only: running it needs the model's architecture (code)")
    module = runner_module(fmt)
    if module is None:
        raise RunnerUnavailable(f"no runner for format '{fmt}'")
    return module.load(root, paths, primary, precision=precision, threads=threads, fmt=fmt, **kw)


__all__ = ["HARDWARE_NEEDS", "Runner", "RunnerUnavailable", "Runtime", "check_placement", "open_runner", "together",
           "queue_for", "runnable", "runner_module", "runtime_of", "runtimes", "toolchain_for", "weights_only"]
