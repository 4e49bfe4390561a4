"""What this host is and can run: one probe of its hardware (CPU model and ISA flags, memory,
cgroup limits, NVIDIA GPUs, macOS), its toolchains and the versions of the packages the declared
formats, runtimes and edges depend on. Workers announce it to the catalog (so the API can say
``waiting_for_hardware`` instead of queueing into the void); benchmarks record its
:func:`fingerprint`. Cheap: no heavy imports, versions come from installed metadata."""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.metadata as _metadata
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
from functools import lru_cache
from typing import Any

from app import formats, runners
from app.runners.base import HARDWARE_NEEDS

MIB = 1024 * 1024

# Flags worth knowing when reading a CPU timing (x86 /proc/cpuinfo "flags", Arm "Features").
ISA_FLAGS = (
    "sse4_2", "avx", "f16c", "fma", "avx2", "avx_vnni", "avx_vnni_int8",
    "avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
    "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16",
    "asimd", "asimddp", "asimdhp", "fphp", "i8mm", "bf16", "sve", "sve2", "sme",
)
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
              "CUDA_VISIBLE_DEVICES")




def packages() -> tuple[str, ...]:
    """Distributions whose versions matter here: numpy, and what every format, runtime and edge declares."""
    from app.conversion import registry  # pydantic: not in every toolchain (fingerprint() runs in all)

    names = ["numpy"]
    names += [p for f in formats.all_formats() for p in f.packages]
    names += [p for rt in runners.runtimes().values() for p in rt.packages]
    names += [m.replace("_", "-") for e in registry.edges() for m in e.requires]
    return tuple(dict.fromkeys(names))


def queues() -> list[str]:
    """Every queue a step can be routed to: the hardware queues, each edge's, each runtime's."""
    from app.conversion import registry

    return sorted(set(HARDWARE_NEEDS) | {e.queue for e in registry.edges()}
                  | {rt.queue for rt in runners.runtimes().values()} | set(_shared_queues()))


def _shared_queues() -> dict[str, tuple[str, str]]:
    """Queues of checks that run in another toolchain that has a runtime too (``also_in``): queue ->
    (hardware, toolchain); e.g. ``apple.coreml-tf``, where a Mac validates a SavedModel's Core ML artifact."""
    return {f"{rt.hardware}.{t}": (rt.hardware, t) for rt in runners.runtimes().values() for t in rt.also_in
            if t != "main"}


# --------------------------------------------------------------------------------------------
# Host fingerprint
# --------------------------------------------------------------------------------------------

def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _cpuinfo() -> dict[str, Any]:
    """Model, vendor and ISA flags from the first processor block of /proc/cpuinfo."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    if fields:
                        break  # first block is enough: every core reports the same model/flags
                    continue
                key, _, value = line.partition(":")
                fields.setdefault(key.strip().lower(), value.strip())
    except OSError:
        pass
    flags = set((fields.get("flags") or fields.get("features") or "").split())
    model = fields.get("model name") or fields.get("hardware") or fields.get("cpu model") or platform.processor()
    vendor = fields.get("vendor_id") or fields.get("cpu implementer") or None
    return {
        "model": model or None,
        "vendor": vendor,
        "isa": [f for f in ISA_FLAGS if f in flags],
        "virtualized": "hypervisor" in flags,
    }


def _meminfo_total_mib() -> float | None:
    text = _read("/proc/meminfo")
    if text:
        for line in text.splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024, 1)
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / MIB, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_limits() -> dict[str, Any]:
    """cgroup v2 CPU quota (in CPUs) and memory limit, when this process is limited."""
    out: dict[str, Any] = {}
    cpu = _read("/sys/fs/cgroup/cpu.max")
    if cpu:
        quota, _, period = cpu.strip().partition(" ")
        if quota != "max" and period:
            out["cpu_limit"] = round(int(quota) / int(period), 2)
    mem = _read("/sys/fs/cgroup/memory.max")
    if mem and mem.strip() != "max":
        out["memory_limit_mib"] = round(int(mem) / MIB, 1)
    return out


_SMI_FIELDS = ("name", "memory.total", "driver_version")
_SMI_MORE = ("compute_cap", "index", "uuid")  # drivers older than ~510 refuse compute_cap: asked for apart


def parse_smi(text: str) -> list[dict[str, Any]]:
    """GPUs from ``nvidia-smi --query-gpu=name,memory.total,driver_version[,compute_cap,index,uuid]
    --format=csv,noheader,nounits`` output."""
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if not parts or not parts[0]:
            continue
        gpu: dict[str, Any] = {"name": parts[0]}
        if len(parts) > 1:
            with contextlib.suppress(ValueError):
                gpu["memory_mib"] = int(float(parts[1]))
        if len(parts) > 2:
            gpu["driver"] = parts[2]
        if len(parts) > 3 and parts[3] and parts[3] != "[N/A]":
            gpu["compute_capability"] = parts[3]
        if len(parts) > 4 and parts[4].isdigit():
            gpu["index"] = int(parts[4])
        if len(parts) > 5 and parts[5]:
            gpu["uuid"] = parts[5]
        gpus.append(gpu)
    return gpus


def _smi(smi: str, fields: tuple[str, ...]) -> subprocess.CompletedProcess:
    return subprocess.run([smi, f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
                          capture_output=True, text=True, timeout=10, check=False)


@lru_cache(maxsize=1)
def _gpus() -> tuple[tuple[dict[str, Any], ...], str | None]:
    """NVIDIA GPUs via nvidia-smi (cached for the process: the subprocess is the one slow part):
    name, memory, driver, and where the driver knows them compute capability, index and UUID."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return (), None
    try:
        proc = _smi(smi, _SMI_FIELDS + _SMI_MORE)
        if proc.returncode != 0:  # an old driver that lacks compute_cap: the basic fields alone
            proc = _smi(smi, _SMI_FIELDS)
    except (OSError, subprocess.SubprocessError) as e:
        return (), f"nvidia-smi failed: {e}"
    if proc.returncode != 0:
        return (), f"nvidia-smi exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()[:200]}"
    return tuple(parse_smi(proc.stdout)), None


def visible_gpu(gpus: list[dict[str, Any]] | tuple[dict[str, Any], ...],
                cuda_visible_devices: str | None) -> dict[str, Any] | None:
    """The GPU a CUDA program here uses as device 0: the first entry of ``CUDA_VISIBLE_DEVICES``
    (an index, or a ``GPU-…``/``MIG-…`` UUID or its prefix), else the first GPU nvidia-smi lists
    (CUDA orders devices like nvidia-smi with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, which the gpu image
    sets). None when none is visible (``CUDA_VISIBLE_DEVICES=""`` or ``-1``)."""
    if not gpus:
        return None
    if cuda_visible_devices is None:
        return dict(gpus[0])
    first = cuda_visible_devices.split(",")[0].strip()
    if not first or first.startswith("-"):
        return None
    if first.isdigit():
        k = int(first)
        by_index = [g for g in gpus if g.get("index") == k]
        if by_index:
            return dict(by_index[0])
        return dict(gpus[k]) if k < len(gpus) else None
    found = [g for g in gpus if str(g.get("uuid", "")).startswith(first)]
    return dict(found[0]) if found else None


def cuda_device() -> dict[str, Any] | None:
    """This host's CUDA device 0 as nvidia-smi describes it (name, compute capability, driver, …),
    or None without one: what a TensorRT engine built here is recorded against and checked with."""
    gpus, _ = _gpus()
    return visible_gpu(gpus, os.environ.get("CUDA_VISIBLE_DEVICES"))


def _versions() -> dict[str, str]:
    return dict(_installed_versions())


@lru_cache(maxsize=1)
def _installed_versions() -> tuple[tuple[str, str], ...]:
    """Package versions, read once per process (each lookup parses a METADATA file: 22 of them took
    most of a fingerprint's 50-120 ms); a worker is restarted after an upgrade anyway."""
    out = {}
    for name in packages():
        try:
            out[name] = _metadata.version(name)
        except _metadata.PackageNotFoundError:
            continue
    return tuple(out.items())


def _os_name() -> str:
    text = _read("/etc/os-release")
    if text:
        for line in text.splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    if sys.platform == "darwin":
        return f"macOS {platform.mac_ver()[0]}"
    return platform.system()


def fingerprint() -> dict[str, Any]:
    """What this host is, for reading a timing: CPU, cores, memory, GPUs, OS, runtime versions."""
    try:
        affinity: int | None = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    gpus, gpu_error = _gpus()
    out: dict[str, Any] = {
        "cpu": _cpuinfo(),
        "logical_cores": os.cpu_count(),
        "affinity_cores": affinity,
        "memory_total_mib": _meminfo_total_mib(),
        **_cgroup_limits(),
        "gpus": [dict(g) for g in gpus],
        "os": _os_name(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "packages": _versions(),
        "thread_env": {k: os.environ[k] for k in THREAD_ENV if k in os.environ},
    }
    if gpu_error:
        out["gpu_error"] = gpu_error
    gov = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    if gov:
        out["cpu"]["governor"] = gov.strip()
    return out



def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def hardware() -> dict[str, Any]:
    hw: dict[str, Any] = {"cpu": {"model": _cpuinfo().get("model") or platform.processor() or platform.machine(),
                                  "cores": os.cpu_count(), "machine": platform.machine()}}
    if platform.machine() in ("x86_64", "AMD64") and importlib.util.find_spec("openvino") is not None:
        hw["intel"] = {"note": "OpenVINO CPU plugin (any x86-64)"}
    gpus, _ = _gpus()
    if gpus:
        hw["gpu"] = {"devices": [g.get("name") for g in gpus]}
    if sys.platform == "darwin":
        hw["apple"] = {"macos": platform.mac_ver()[0]}
    return hw


def toolchains(settings) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {
        "main": {"python": sys.executable, "versions": {p: v for p in packages() if (v := _version(p))}}}
    for name, python in settings.toolchains.items():
        if settings.toolchain_python(name):
            out[name] = {"python": python}
    return out


def capacity() -> tuple[int, float | None]:
    """The cores this process may use (affinity, cgroup CPU quota) and the memory it may use in MiB
    (the smaller of RAM and a cgroup memory limit; None when unknown)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    limits = _cgroup_limits()
    if limits.get("cpu_limit"):
        cores = min(cores, max(1, int(limits["cpu_limit"])))
    mems = [m for m in (_meminfo_total_mib(), limits.get("memory_limit_mib")) if m]
    return cores, (min(mems) if mems else None)


def servable_queues(settings) -> dict[str, str]:
    """Every queue an edge can be routed to -> '' if this host can serve it, else why not."""
    from app.conversion import registry

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
    for queue, (hw_name, chain) in _shared_queues().items():
        why = (HARDWARE_NEEDS[hw_name] if hw_name not in hw
               else "" if chain in chains else f"needs the '{chain}' toolchain (MODELPORT_TOOLCHAINS)")
        if queue not in result or not why:
            result[queue] = why
    return result


def describe(settings) -> dict[str, Any]:
    return {"hardware": hardware(), "toolchains": toolchains(settings), "python": platform.python_version()}
