"""Create the peer-server venvs for bench/serving/run.py (bench set-up only, never modelport runtime).

Each peer gets its own venv under /tmp/modelport-bench-venvs/<peer> with the same onnxruntime
version as the main venv (falling back to the newest that installs) and numpy. A venv is
considered ready when its ``.ready`` marker exists; a failed install leaves ``.failed`` with the
pip output, so run.py can report why the peer was skipped.

    .venv/bin/python bench/serving/setup_peers.py            # all peers + tools
    .venv/bin/python bench/serving/setup_peers.py mlserver   # one
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

VENV_ROOT = Path(os.environ.get("MODELPORT_BENCH_VENVS", "/tmp/modelport-bench-venvs"))


def _ort_version() -> str:
    try:
        import onnxruntime

        return onnxruntime.__version__
    except Exception:  # noqa: BLE001
        return ""


def base_python() -> str:
    """A CPython 3.11 interpreter to build venvs from (not the main venv's, to keep them apart)."""
    real = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    return str(real) if real.exists() else sys.executable


ORT = _ort_version()

# pip requirement sets per peer.  Pins: uvloop<0.22 for MLServer (issue text).
PEERS: dict[str, list[str]] = {
    "pytriton": ["nvidia-pytriton", "numpy"],
    "mlserver": ["mlserver", "uvloop<0.22", "numpy"],
    "litserve": ["litserve", "numpy"],
    "tools": ["py-spy"],
}


def venv_python(name: str) -> Path:
    return VENV_ROOT / name / "bin" / "python"


def is_ready(name: str) -> bool:
    return (VENV_ROOT / name / ".ready").exists()


def failure(name: str) -> str | None:
    p = VENV_ROOT / name / ".failed"
    return p.read_text()[-3000:] if p.exists() else None


def _pip(py: Path, args: list[str], log) -> int:
    cmd = [str(py), "-m", "pip", "install", "--disable-pip-version-check", "-q", *args]
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode


def setup(name: str, force: bool = False) -> bool:
    d = VENV_ROOT / name
    if is_ready(name) and not force:
        return True
    d.mkdir(parents=True, exist_ok=True)
    (d / ".failed").unlink(missing_ok=True)
    log_path = d / "install.log"
    with open(log_path, "w") as log:
        if not venv_python(name).exists():
            rc = subprocess.run([base_python(), "-m", "venv", str(d)], stdout=log, stderr=subprocess.STDOUT).returncode
            if rc:
                (d / ".failed").write_text(log_path.read_text())
                return False
        py = venv_python(name)
        reqs = list(PEERS[name])
        if name != "tools":
            # same onnxruntime as the main venv if possible, else whatever resolves with the peer
            rc = _pip(py, [*reqs, f"onnxruntime=={ORT}"] if ORT else reqs + ["onnxruntime"], log)
            if rc:
                log.write(f"\n-- onnxruntime=={ORT} did not resolve with {reqs}; retrying unpinned\n")
                rc = _pip(py, [*reqs, "onnxruntime"], log)
        else:
            rc = _pip(py, reqs, log)
    if rc:
        (d / ".failed").write_text(log_path.read_text())
        return False
    (d / ".ready").write_text("ok\n")
    return True


def main(argv: list[str]) -> int:
    names = argv or list(PEERS)
    ok = True
    for n in names:
        print(f"[setup] {n} -> {VENV_ROOT / n} ...", flush=True)
        good = setup(n)
        print(f"[setup] {n}: {'ready' if good else 'FAILED (see ' + str(VENV_ROOT / n / 'install.log') + ')'}", flush=True)
        ok &= good
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
