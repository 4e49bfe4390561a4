"""Write a zip archive as a stream of bytes without a seekable file (data descriptors)."""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterable, Iterator


class _Pipe:
    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.pos = 0

    def write(self, b: bytes) -> int:
        self.parts.append(bytes(b))
        self.pos += len(b)
        return len(b)

    def tell(self) -> int:
        return self.pos

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        return out


def stream_zip(entries: Iterable[tuple[str, int, Callable[[], Iterable[bytes]]]]) -> Iterator[bytes]:
    """Yield a ZIP_STORED archive of ``(path, size, chunks())`` entries."""
    pipe = _Pipe()
    with zipfile.ZipFile(pipe, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:  # type: ignore[arg-type]
        for path, size, chunks in entries:
            info = zipfile.ZipInfo(path, date_time=(2020, 1, 1, 0, 0, 0))
            info.file_size = size
            with zf.open(info, "w", force_zip64=size > 0x7FFFFFFF) as out:
                for chunk in chunks():
                    out.write(chunk)
                    if pipe.pos and len(pipe.parts) > 4:
                        yield pipe.take()
            yield pipe.take()
    yield pipe.take()
