"""Reading the zip archives that torch writes (torch.save, TorchScript, torch.export, torch.package)
with limits, without torch."""

from __future__ import annotations

import zipfile
from pathlib import Path

from app.formats.base import MalformedModel

ZIP_MAGIC = b"PK\x03\x04"
MAX_PICKLE_BYTES = 512 * 1024 * 1024


def is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == ZIP_MAGIC


def names(path: Path) -> list[str] | None:
    """Member names, or None when it is not a readable zip."""
    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return None


def member_ending(members: list[str], suffix: str) -> str | None:
    """The shallowest member whose path ends with ``/suffix`` (torch puts everything under one
    top folder whose name varies), or equals ``suffix``."""
    hits = [m for m in members if m == suffix or m.endswith("/" + suffix)]
    return min(hits, key=lambda m: m.count("/")) if hits else None


def read_member(path: Path, member: str, fmt: str, limit: int = MAX_PICKLE_BYTES) -> bytes:
    try:
        with zipfile.ZipFile(path) as z:
            info = z.getinfo(member)
            if info.file_size > limit:
                raise MalformedModel(fmt, f"{member} declares {info.file_size} bytes, over the {limit} byte limit")
            with z.open(info) as f:
                data = f.read(limit + 1)
            if len(data) > limit:
                raise MalformedModel(fmt, f"{member} is larger than the {limit} byte limit")
            return data
    except MalformedModel:
        raise
    except (zipfile.BadZipFile, KeyError, OSError, EOFError, ValueError, NotImplementedError) as e:
        raise MalformedModel(fmt, f"cannot read {member} from the archive: {e}") from None


def member_sizes(path: Path) -> dict[str, int]:
    with zipfile.ZipFile(path) as z:
        return {i.filename: i.file_size for i in z.infolist()}
