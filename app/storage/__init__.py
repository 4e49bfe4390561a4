"""Object storage behind one small interface. Keys are content-addressed; writes are atomic."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

CHUNK = 1024 * 1024


def blob_key(sha256: str) -> str:
    return f"blobs/sha256/{sha256[:2]}/{sha256}"


class ObjectStore(Protocol):
    url: str

    def put_file(self, key: str, path: Path, *, move: bool = False) -> None:
        """Store the file at ``path`` under ``key``, atomically. With ``move`` the store may take
        the file instead of copying it. An existing key is left as it is (content-addressed)."""

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int: ...

    def iter_chunks(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]: ...

    def get_to_path(self, key: str, path: Path) -> None: ...

    def copy(self, src_key: str, dst_key: str) -> None:
        """Copy an object to another key inside the store (server-side on S3); an existing
        ``dst_key`` is left as it is."""

    def delete(self, key: str) -> None: ...

    def ping(self) -> None:
        """Raise if the store cannot be reached."""

    def presigned_url(self, key: str, expires_s: int = 3600, filename: str | None = None) -> str | None: ...


def open_store(url: str, settings=None) -> ObjectStore:
    if url.startswith("file://"):
        from app.storage.local import LocalStore

        return LocalStore(Path(url[len("file://") :]))
    if url.startswith("s3://"):
        from app.storage.s3 import S3Store

        return S3Store.from_url(url, settings)
    raise ValueError(f"unsupported storage URL {url!r}: use file:///path or s3://bucket[/prefix]")


def error_types(url: str) -> tuple[type[BaseException], ...]:
    """What the store behind ``url`` raises besides OSError (mapped by the API: 503 when it is down)."""
    if url.startswith("s3://"):
        from app.storage.s3 import S3Store

        return S3Store.error_types()
    return ()


def unavailable(exc: BaseException) -> str | None:
    """Why the object store cannot be reached, when ``exc`` says so; None for other errors."""
    mod = type(exc).__module__
    if mod.startswith(("botocore", "boto3", "s3transfer")):
        from app.storage.s3 import S3Store

        return S3Store.unavailable(exc)
    return None
