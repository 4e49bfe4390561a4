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


def runner_module(fmt: str, hardware: str | None = None) -> ModuleType | None:
    """The runner module of ``fmt``: its default one, or with ``hardware`` the one (default or
    another the format declares) whose runtime needs that hardware, falling back to the default."""
    info = formats.find(fmt)
    if info is None or not info.runner:
        return None
    if hardware is not None:
        for entry in info.other_runners:
            m = _import(entry)
            if m.RUNTIME.hardware == hardware:
                return m
    return _import(info.runner)


def runtime_of(fmt: str, hardware: str | None = None) -> Runtime | None:
    """The runtime that runs ``fmt`` (on ``hardware`` where the format declares one for it), or
    None (weights only, refused, unknown)."""
    m = runner_module(fmt, hardware)
    return getattr(m, "RUNTIME", None) if m is not None else None


def on_hardware(fmt: str, hardware: str | None) -> Runtime | None:
    """The runtime of ``fmt`` that needs exactly ``hardware``, or None (none declared for it)."""
    rt = runtime_of(fmt, hardware) if hardware else None
    return rt if rt is not None and rt.hardware == hardware else None


def runnable(fmt: str) -> bool:
    """A runner exists for it (on some host): it can be served, validated and benchmarked."""
    return runtime_of(fmt) is not None


def weights_only(fmt: str) -> bool:
    info = formats.find(fmt)
    return bool(info and info.weights_only)


def queue_for(fmt: str, hardware: str | None = None) -> str:
    """The queue on which an artifact of ``fmt`` is validated and benchmarked (on ``hardware``
    where the format has a runtime for it)."""
    rt = runtime_of(fmt, hardware)
    return rt.queue if rt is not None else DEFAULT_QUEUE


def toolchain_for(fmt: str) -> str:
    rt = runtime_of(fmt)
    return rt.toolchain if rt is not None else "main"


def check_placement(candidate: str, reference: str | None = None, hardware: str | None = None) -> tuple[str, str]:
    """(queue, toolchain) of a step that runs ``candidate`` (and, to validate it, ``reference``):
    a runtime outside the main toolchain decides, because only its interpreter has it (a TensorFlow
    upload is the reference of its TFLite artifact: both run under the TF toolchain, whose LiteRT
    runs TFLite too); otherwise the candidate's hardware does (``hardware``, where the candidate's
    format has a runtime for it: ONNX on ``gpu`` runs on ONNX Runtime's CUDA provider)."""
    a, b = runtime_of(candidate), runtime_of(reference) if reference is not None else None
    if a is not None and b is not None and not _home_shared(a, b) and a.toolchains & b.toolchains:
        # neither's own interpreter has the other, a third one has both: there, on the candidate's hardware
        # (a Core ML artifact of a SavedModel: coremltools and TensorFlow 2.12, the coreml-tf toolchain, on a Mac)
        t = sorted(a.toolchains & b.toolchains)[0]
        return (a.hardware if t == "main" else f"{a.hardware}.{t}"), t
    for fmt in (reference, candidate):
        if fmt is not None and toolchain_for(fmt) != "main":
            return queue_for(fmt), toolchain_for(fmt)
    return queue_for(candidate, hardware), "main"


def together(candidate: str, reference: str) -> bool:
    """Whether one interpreter runs both (so the reference can be compared with the candidate):
    a TensorFlow upload with its TFLite or ONNX artifact, yes (the TF toolchain has LiteRT and ONNX
    Runtime); with an OpenVINO artifact, no."""
    a, b = runtime_of(candidate), runtime_of(reference)
    if a is None or b is None:
        return True  # weights only on either side: compared as tensors, no runtime
    return _home_shared(a, b)


def _home_shared(a: Runtime, b: Runtime) -> bool:
    """Whether one runtime's own interpreter has the other too. A third toolchain that has both (coreml-tf:
    Core ML and TensorFlow 2.12) does not make an upload the reference: it runs SavedModels, not every
    TensorFlow model (Keras 3 files need TensorFlow 2.16+), so a Keras model's Core ML artifact is proven
    against the SavedModel made on the way."""
    return a.toolchain in b.toolchains or b.toolchain in a.toolchains


def runtimes() -> dict[str, Runtime]:
    """Every declared runtime, by runner module (each format's default and its other runners)."""
    out = {}
    for f in formats.all_formats():
        for entry in (f.runner, *f.other_runners) if f.runner else ():
            out[entry] = _import(entry).RUNTIME
    return out


def runtimes_of(fmt: str) -> list[Runtime]:
    """Every runtime that runs ``fmt``: the default first, then those for other hardware."""
    info = formats.find(fmt)
    if info is None or not info.runner:
        return []
    return [_import(e).RUNTIME for e in (info.runner, *info.other_runners)]


def open_runner(fmt: str, root: Path, paths: list[str], primary: str, *, precision: str = "fp32",
                threads: int | None = None, hardware: str | None = None, **kw) -> Runner:
    """Load ``fmt``'s file set with its runner (the one for ``hardware`` where the format declares one)."""
    if weights_only(fmt):
        raise RunnerUnavailable(f"{fmt} holds weights only: running it needs the model's architecture (code)")
    module = runner_module(fmt, hardware)
    if module is None:
        raise RunnerUnavailable(f"no runner for format '{fmt}'")
    return module.load(root, paths, primary, precision=precision, threads=threads, fmt=fmt, **kw)


__all__ = ["HARDWARE_NEEDS", "Runner", "RunnerUnavailable", "Runtime", "check_placement", "on_hardware", "open_runner", "together",
           "queue_for", "runnable", "runner_module", "runtime_of", "runtimes", "runtimes_of", "toolchain_for", "weights_only"]
