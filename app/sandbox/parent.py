"""Run one edge in a child process under its toolchain's interpreter, with a wall-clock limit
and an address-space limit, its output captured to a log file. A converter that crashes, is
killed, runs out of memory or hangs fails its step with a reason; it never takes the worker down."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from app.conversion.base import Edge
from app.sandbox.io import Source

PROJECT_ROOT = Path(__file__).resolve().parents[2]
APP_DIR = Path(__file__).resolve().parents[1]


def import_root(python: str) -> Path:
    """What goes on the child's PYTHONPATH so that it can import ``app``. The main interpreter gets
    the project root. Another toolchain's interpreter gets a folder holding only a link to the
    ``app`` package: when modelport is installed (not a checkout), the project root is the main
    environment's site-packages, whose numpy, onnx and protobuf would shadow the toolchain's own."""
    if python == sys.executable:
        return PROJECT_ROOT
    digest = hashlib.sha256(str(APP_DIR).encode()).hexdigest()[:12]
    root = Path(tempfile.gettempdir()) / f"modelport-import-root-{os.getuid()}-{digest}"
    root.mkdir(mode=0o700, exist_ok=True)
    link = root / "app"
    if not link.is_symlink() or link.resolve() != APP_DIR:
        tmp = root / f".app-{os.getpid()}-{time.monotonic_ns()}"
        tmp.symlink_to(APP_DIR, target_is_directory=True)
        tmp.replace(link)  # atomic, also over a stale link
    return root


class SandboxFailure(Exception):
    def __init__(self, error: dict[str, Any]):
        super().__init__(error.get("message"))
        self.error = error


def run_edge(edge: Edge, src: Source, out_dir: Path, options: dict[str, Any], **kw) -> dict[str, Any]:
    """Convert; return the edge's result dict (``primary``, ``details``, ``warnings``, ``versions``,
    ``inspection``, ``seconds``). Raises :class:`SandboxFailure` with a structured error."""
    return run_in_sandbox(edge.implementation, edge.name, "convert", src, out_dir, options, **kw)


def run_in_sandbox(implementation: str, label: str, kind: str, src: Source, out_dir: Path, options: dict[str, Any],
                   *, python: str, timeout_s: float, memory_mb: int, log_path: Path,
                   poll: Callable[[], bool] | None = None, poll_every_s: float = 2.0) -> dict[str, Any]:
    """Run ``implementation`` ("module:function") on ``src`` in a child process. ``poll`` is called
    every ``poll_every_s`` while the child runs (heartbeat); returning True cancels it."""
    work = out_dir.parent
    request_path = work / f"request-{os.getpid()}-{time.monotonic_ns()}.json"
    result_path = request_path.with_name(request_path.stem.replace("request", "result") + ".json")
    request_path.write_text(json.dumps({
        "edge": label, "kind": kind, "implementation": implementation, "out_dir": str(out_dir),
        "options": options, "source": {**asdict(src), "root": str(src.root)},
    }, default=str))
    limit = memory_mb * 1024 * 1024

    def limits() -> None:
        os.setsid()
        _die_with_parent()
        if limit > 0:  # 0: none (CUDA children: see Settings.queue_memory_mb)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(import_root(python)), os.environ.get("PYTHONPATH", "")]),
           "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    started = time.monotonic()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([python, "-m", "app.sandbox.child", str(request_path), str(result_path)],
                                stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=limits, cwd=work)
        reason = None
        try:
            while True:
                try:
                    proc.wait(timeout=min(poll_every_s, max(timeout_s / 4, 0.01)))  # a short limit is kept
                    break
                except subprocess.TimeoutExpired:
                    pass
                if time.monotonic() - started > timeout_s:
                    what = {"convert": "conversion", "validate": "validation"}.get(kind, kind)
                    reason = f"the {what} ran longer than its {timeout_s:g}s time limit and was stopped"
                elif poll is not None and poll():
                    reason = "cancelled"
                if reason:
                    _kill(proc)
                    break
        finally:
            if proc.poll() is None:  # never leave a converter running behind us
                _kill(proc)
    seconds = round(time.monotonic() - started, 3)
    request_path.unlink(missing_ok=True)
    if reason == "cancelled":
        raise SandboxFailure({"message": "the job was cancelled while converting", "cancelled": True})
    if reason:
        raise SandboxFailure({"message": reason, "hint": "raise the time limit for this queue, or convert a "
                              "smaller model", "seconds": seconds})
    if not result_path.exists():
        rc = proc.returncode
        if rc is not None and rc < 0:
            sig = signal.Signals(-rc).name
            why = ("it was killed (out of memory?)" if sig == "SIGKILL" else f"it died with {sig}")
        else:
            why = f"it exited with code {rc} before writing a result"
        tail = log_path.read_text(errors="replace")[-1500:] if log_path.exists() else ""
        oom = _looks_oom(tail)
        raise SandboxFailure({
            "message": f"the converter process crashed: {why}" + (" — it ran out of memory" if oom else ""),
            "hint": f"the memory limit is {memory_mb} MiB (MODELPORT_CONVERT_MEMORY_MB)" if oom else None,
            "log_tail": tail, "seconds": seconds})
    payload = json.loads(result_path.read_text())
    result_path.unlink(missing_ok=True)
    if not payload.get("ok"):
        error = {**payload["error"], "seconds": seconds}
        if _looks_oom(str(error.get("message")) + str(error.get("traceback", ""))):
            error["out_of_memory"] = True
            error["hint"] = (f"the converter ran out of its memory limit of {memory_mb} MiB; raise "
                             "MODELPORT_CONVERT_MEMORY_MB or use a worker with more memory")
        raise SandboxFailure(error)
    result = payload["result"]
    result["inspection"] = payload.get("inspection")
    if kind == "convert" and not (out_dir / result["primary"]).exists():
        raise SandboxFailure({"message": f"the converter reported {result['primary']} but did not write it"})
    result["seconds"] = seconds
    return result


OOM_SIGNS = ("MemoryError", "std::bad_alloc", "Cannot allocate memory", "failed to map segment",
             "out of memory", "mmap failed")


def _looks_oom(text: str) -> bool:
    return any(sign in text for sign in OOM_SIGNS)


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _die_with_parent() -> None:
    """Linux: SIGKILL the converter when the worker that started it dies (a SIGKILLed worker must
    not leave an orphan converter running)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
