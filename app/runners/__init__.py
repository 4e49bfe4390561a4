"""Runners: load a model file set and run it on numpy arrays, one module per runtime.

``open_runner(fmt, root, paths, primary, precision=..., threads=...)`` picks the runner for a
format. A runner that cannot run on this host raises :class:`RunnerUnavailable` with the reason
(e.g. "Core ML prediction needs macOS"). Heavy imports stay inside the runner modules."""

from __future__ import annotations

import importlib
from pathlib import Path

from app.runners.base import Runner, RunnerUnavailable

# format -> module under app.runners implementing ``load(root, paths, primary, precision, threads, **kw) -> Runner``
RUNNER_MODULES: dict[str, str] = {
    "onnx": "onnxruntime_runner",
    "openvino": "openvino_runner",
    "torchscript": "torchscript_runner",
    "torch_export": "torch_export_runner",
    "tflite": "tflite_runner",
    "coreml": "coreml_runner",
    "tensorrt": "tensorrt_runner",
    "savedmodel": "tensorflow_runner",  # TensorFlow: only under the TF toolchain (queue cpu.tf)
    "keras": "tensorflow_runner",
}
TF_ONLY = {"savedmodel", "keras"}
"""Formats whose runner needs TensorFlow, which only the TF toolchain has: their validation runs there."""
WEIGHTS_ONLY = {"pytorch", "safetensors"}


def open_runner(fmt: str, root: Path, paths: list[str], primary: str, *, precision: str = "fp32",
                threads: int | None = None, **kw) -> Runner:
    if fmt in WEIGHTS_ONLY:
        raise RunnerUnavailable(f"{fmt} holds weights only: running it needs the model's architecture (code)")
    name = RUNNER_MODULES.get(fmt)
    if name is None:
        raise RunnerUnavailable(f"no runner for format '{fmt}'")
    module = importlib.import_module(f"app.runners.{name}")
    if name == "tensorflow_runner":
        kw["fmt"] = fmt
    return module.load(root, paths, primary, precision=precision, threads=threads, **kw)


__all__ = ["Runner", "RunnerUnavailable", "open_runner", "RUNNER_MODULES", "TF_ONLY", "WEIGHTS_ONLY"]
