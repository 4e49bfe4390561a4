"""Safe extraction of uploaded archives (.zip, .tar, .tar.gz) for directory formats.

Refused: absolute paths and ``..`` (path traversal), symlinks and hard links, device files,
more than ``max_files`` members, more than ``max_total`` bytes unpacked, and members whose
unpacked/packed ratio is over ``max_ratio`` (zip bombs). Sizes are enforced while writing,
not trusted from headers."""

from __future__ import annotations

import os
import posixpath
import stat
import tarfile
import zipfile
from pathlib import Path

from app.errors import Unprocessable
from app.limits import check_name_chars, check_zip_directory, echo, zip_tail

CHUNK = 1024 * 1024
MAX_HEADER_BYTES = 1024 * 1024
"""The largest tar extension header (GNU long name, pax record) read: tarfile reads each whole into
memory, and a few hundred KB of gzip can declare one of hundreds of MB."""


class ArchiveError(Unprocessable):
    code = "bad_archive"


class UnsafeArchive(Unprocessable):
    code = "unsafe_archive"


def kind(path: Path) -> str | None:
    with open(path, "rb") as f:
        head = f.read(512)
    if head[:4] == b"PK\x03\x04" or head[:4] == b"PK\x05\x06":
        return "zip"
    if head[:2] == b"\x1f\x8b":
        return "tar.gz"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    return None


def safe_relpath(name: str, *, what: str = "archive member") -> str:
    """Normalise a member or file name to a safe relative POSIX path, or refuse it."""
    n = name.replace("\\", "/")
    shown = echo(name)  # names are echoed truncated: a member name can be megabytes long
    if n.startswith("/") or (len(n) > 1 and n[1] == ":"):
        raise UnsafeArchive(f"{what} {shown!r} has an absolute path", detail={"member": shown},
                            code="path_traversal")
    norm = posixpath.normpath(n)
    if norm in (".", "") or norm.startswith("../") or norm == ".." or "/../" in f"/{norm}/":
        raise UnsafeArchive(f"{what} {shown!r} escapes the upload directory (path traversal)",
                            detail={"member": shown}, code="path_traversal")
    if any(part in ("", ".", "..") for part in norm.split("/")) or "\x00" in norm:
        raise UnsafeArchive(f"{what} {shown!r} is not a valid path", detail={"member": shown}, code="path_traversal")
    try:
        check_name_chars(norm, what)
    except ValueError as e:
        raise UnsafeArchive(str(e), detail={"member": shown}, code="bad_filename") from None
    return norm


def extract(path: Path, dest: Path, *, max_files: int, max_total: int, max_ratio: float) -> list[str]:
    k = kind(path)
    if k == "zip":
        return _extract_zip(path, dest, max_files, max_total, max_ratio)
    if k in ("tar", "tar.gz"):
        return _extract_tar(path, dest, max_files, max_total, max_ratio)
    raise ArchiveError("not a zip or tar archive")


class _Budget:
    def __init__(self, max_total: int, packed: int, max_ratio: float):
        self.max_total, self.packed, self.max_ratio, self.total = max_total, max(packed, 1), max_ratio, 0

    def add(self, n: int) -> None:
        self.total += n
        if self.total > self.max_total:
            raise UnsafeArchive(f"archive unpacks to more than {self.max_total} bytes", code="archive_too_large",
                                detail={"limit_bytes": self.max_total})
        if self.total > 1024 * 1024 and self.total / self.packed > self.max_ratio:
            raise UnsafeArchive(
                f"archive expands more than {self.max_ratio:g}x its packed size (a decompression bomb?)",
                code="archive_bomb", detail={"max_ratio": self.max_ratio})


def _write(src, dest: Path, budget: _Budget) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "xb") as out:
        while chunk := src.read(CHUNK):
            budget.add(len(chunk))
            out.write(chunk)


def _extract_zip(path: Path, dest: Path, max_files: int, max_total: int, max_ratio: float) -> list[str]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        tail = zip_tail(f, size)
    try:  # before zipfile builds one object per central-directory entry
        check_zip_directory(tail, size, max_files)
    except ValueError as e:
        raise UnsafeArchive(str(e), code="archive_too_many_files", detail={"max_files": max_files}) from None
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise ArchiveError(f"corrupt zip archive: {_why(e)}", code="corrupt_archive") from None
    out: list[str] = []
    budget = _Budget(max_total, path.stat().st_size, max_ratio)
    with zf:
        infos = zf.infolist()
        if len(infos) > max_files:
            raise UnsafeArchive(f"archive has {len(infos)} members, over the limit of {max_files}",
                                code="archive_too_many_files")
        for info in infos:
            if info.is_dir() and posixpath.normpath(info.filename.replace("\\", "/")) == ".":
                continue  # "./" as written by zip -r . : the archive's own root
            rel = safe_relpath(info.filename)
            mode = (info.external_attr >> 16) & 0o170000
            if mode == stat.S_IFLNK:
                raise UnsafeArchive(f"archive member {echo(info.filename)!r} is a symbolic link; links are refused",
                                    code="archive_link", detail={"member": echo(info.filename)})
            if info.is_dir():
                continue
            if mode not in (0, stat.S_IFREG):
                raise UnsafeArchive(f"archive member {echo(info.filename)!r} is not a regular file", code="archive_link")
            if rel in out:
                raise ArchiveError(f"archive holds {echo(rel)!r} twice", code="corrupt_archive")
            try:
                with zf.open(info) as src:
                    _write(src, dest / rel, budget)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
                raise ArchiveError(f"corrupt zip archive at {echo(info.filename)!r}: {_why(e)}",
                                   code="corrupt_archive") from None
            out.append(rel)
    return out


def _extract_tar(path: Path, dest: Path, max_files: int, max_total: int, max_ratio: float) -> list[str]:
    out: list[str] = []
    budget = _Budget(max_total, path.stat().st_size, max_ratio)
    try:
        with tarfile.open(path, mode="r:*", tarinfo=_BoundedTarInfo) as tf:
            for n, member in enumerate(tf):
                if n >= max_files:
                    raise UnsafeArchive(f"archive has more than {max_files} members", code="archive_too_many_files")
                if member.isdir() and posixpath.normpath(member.name) == ".":
                    continue  # "./" as written by tar -C dir . : the archive's own root
                rel = safe_relpath(member.name)
                if member.issym() or member.islnk():
                    raise UnsafeArchive(f"archive member {echo(member.name)!r} is a link; links are refused",
                                        code="archive_link", detail={"member": echo(member.name)})
                if member.isdir():
                    continue
                if not member.isfile():
                    raise UnsafeArchive(f"archive member {echo(member.name)!r} is not a regular file", code="archive_link")
                src = tf.extractfile(member)
                if src is None:
                    continue
                if os.path.exists(dest / rel):
                    raise ArchiveError(f"archive holds {echo(rel)!r} twice", code="corrupt_archive")
                _write(src, dest / rel, budget)
                out.append(rel)
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        raise ArchiveError(f"corrupt tar archive: {_why(e)}", code="corrupt_archive") from None
    return out


def _why(e: BaseException) -> str:
    """What went wrong, for the client: an OSError's reason without the (temporary, absolute) path."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return echo(str(e), 300)


class _BoundedTarInfo(tarfile.TarInfo):
    """A tar header whose extension records (GNU long names, pax headers) are refused above
    ``MAX_HEADER_BYTES`` before tarfile reads them whole into memory."""

    def _proc_member(self, tarfile_):
        if self.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                         tarfile.SOLARIS_XHDTYPE) and self.size > MAX_HEADER_BYTES:
            raise UnsafeArchive(f"a tar extension header declares {self.size} bytes, over the limit of "
                                f"{MAX_HEADER_BYTES}", code="archive_bomb", detail={"limit_bytes": MAX_HEADER_BYTES})
        return super()._proc_member(tarfile_)


def strip_common_root(paths: list[str]) -> str:
    """The single top folder all paths share, or ''."""
    tops = {p.split("/", 1)[0] for p in paths}
    if len(tops) == 1 and all("/" in p for p in paths):
        return tops.pop()
    return ""
