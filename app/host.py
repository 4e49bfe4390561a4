"""What this host can run: hardware, toolchains with versions. Announced to the catalog so the
API can say ``waiting_for_hardware`` instead of queueing into the void."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
from typing import Any

from app.conversion import registry

HARDWARE_NEEDS = {"cpu": "", "intel": "needs OpenVINO on an x86-64 CPU",
                  "gpu": "needs an NVIDIA GPU (nvidia-smi finds none)", "apple": "needs macOS"}
MAIN_PACKAGES = ("torch", "onnx", "onnxscript", "onnxruntime", "openvino", "nncf", "safetensors", "coremltools")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def hardware() -> dict[str, Any]:
    hw: dict[str, Any] = {"cpu": {"model": _cpu_model(), "cores": os.cpu_count(), "machine": platform.machine()}}
    if platform.machine() in ("x86_64", "AMD64") and importlib.util.find_spec("openvino") is not None:
        hw["intel"] = {"note": "OpenVINO CPU plugin (any x86-64)"}
    gpu = _nvidia_gpus()
    if gpu:
        hw["gpu"] = {"devices": gpu}
    if sys.platform == "darwin":
        hw["apple"] = {"macos": platform.mac_ver()[0]}
    return hw


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _nvidia_gpus() -> list[str]:
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.startswith("GPU")] if out.returncode == 0 else []


def toolchains(settings) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {
        "main": {"python": sys.executable, "versions": {p: v for p in MAIN_PACKAGES if (v := _version(p))}}}
    for name, python in settings.toolchains.items():
        if settings.toolchain_python(name):
            out[name] = {"python": python}
    return out


def servable_queues(settings) -> dict[str, str]:
    """Every queue an edge can be routed to -> '' if this host can serve it, else why not."""
    hw = hardware()
    chains = toolchains(settings)
    result: dict[str, str] = {q: "" if q in hw else HARDWARE_NEEDS[q] for q in HARDWARE_NEEDS}
    for edge in registry.edges():
        why = ""
        if edge.hardware not in hw:
            why = HARDWARE_NEEDS[edge.hardware]
        elif edge.toolchain not in chains:
            why = f"needs the '{edge.toolchain}' toolchain (MODELPORT_TOOLCHAINS)"
        else:
            missing = [m for m in edge.requires if edge.toolchain == "main" and importlib.util.find_spec(m) is None]
            if missing:
                why = f"needs Python packages {', '.join(missing)}"
        if edge.queue not in result or not why:
            result[edge.queue] = why
    return result


def describe(settings) -> dict[str, Any]:
    return {"hardware": hardware(), "toolchains": toolchains(settings), "python": platform.python_version()}
