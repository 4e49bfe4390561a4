"""Object store on the local filesystem. Writes go to a temp file in the same directory tree
and are renamed into place, so a half-written object is never visible."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from app.storage import CHUNK


class LocalStore:
    def __init__(self, root: Path):
        self.root = root.expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / ".tmp").mkdir(exist_ok=True)
        self.url = f"file://{self.root}"

    def _path(self, key: str) -> Path:
        p = (self.root / key).resolve()
        if self.root not in p.parents:
            raise ValueError(f"object key escapes the store: {key!r}")
        return p

    def put_file(self, key: str, path: Path, *, move: bool = False) -> None:
        dest = self._path(key)
        if dest.exists():
            if move:
                path.unlink(missing_ok=True)
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        if move:
            try:
                os.replace(path, dest)  # same filesystem: atomic, no copy
                return
            except OSError:
                pass  # another filesystem: copy below
        fd, tmp = tempfile.mkstemp(dir=self.root / ".tmp")
        try:
            with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
                shutil.copyfileobj(src, out, CHUNK)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        if move:
            path.unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def iter_chunks(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        with open(self._path(key), "rb") as f:
            while chunk := f.read(chunk_size):
                yield chunk

    def get_to_path(self, key: str, path: Path) -> None:
        src = self._path(key)
        try:
            os.link(src, path)  # objects are immutable: a hard link is a free copy
        except OSError:
            shutil.copyfile(src, path)

    def copy(self, src_key: str, dst_key: str) -> None:
        self.put_file(dst_key, self._path(src_key))

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def ping(self) -> None:
        fd, probe = tempfile.mkstemp(dir=self.root / ".tmp")  # fails if the store is gone or read-only
        os.close(fd)
        os.unlink(probe)

    def presigned_url(self, key: str, expires_s: int = 3600, filename: str | None = None) -> str | None:
        return None
