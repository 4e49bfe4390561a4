"""Protobuf wire format without a schema: a varint reader and a top-level walk that lists a
message's fields in order. Enough to tell ONNX, Core ML and SavedModel apart from the bytes."""

from __future__ import annotations

from pathlib import Path


def varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """(value, next position); ValueError when truncated or longer than 10 bytes."""
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 64:
            raise ValueError("varint longer than 10 bytes")


def top_level_fields(path: Path, max_fields: int = 100_000) -> list[tuple[int, int]] | None:
    """``[(field_number, wire_type), …]`` in file order for the message in ``path``, or None if it
    is not valid wire format all the way to the end (or has more than ``max_fields`` fields).
    Length-delimited bodies are skipped by seeking, so a large file costs only its field headers."""
    fields: list[tuple[int, int]] = []
    size = path.stat().st_size
    if size == 0:
        return None
    with open(path, "rb") as f:
        pos = 0
        while pos != size:
            if len(fields) >= max_fields:
                return None
            f.seek(pos)
            head = f.read(20)
            try:
                key, p = varint(head, 0)
                field, wtype = key >> 3, key & 7
                if field == 0:
                    return None
                if wtype == 0:
                    _, p = varint(head, p)
                    pos += p
                elif wtype == 1:
                    pos += p + 8
                elif wtype == 5:
                    pos += p + 4
                elif wtype == 2:
                    length, p = varint(head, p)
                    pos += p + length
                else:  # groups (3, 4) are unused by these formats; 6 and 7 do not exist
                    return None
            except ValueError:
                return None
            if pos > size:
                return None
            fields.append((field, wtype))
    return fields
