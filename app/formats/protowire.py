"""A top-level walk over protobuf wire format: which field numbers a message has, with their
wire types, without a schema. Enough to tell ONNX, Core ML and SavedModel apart from the bytes."""

from __future__ import annotations

from pathlib import Path


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
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
        if shift > 63:
            raise ValueError("varint too long")


def top_level_fields(path: Path, max_fields: int = 100_000) -> dict[int, set[int]] | None:
    """``{field_number: {wire_types}}`` for the message in ``path``, or None if it is not valid
    protobuf wire format all the way to the end. Length-delimited fields are skipped by seeking,
    so a large file costs only its field headers."""
    fields: dict[int, set[int]] = {}
    size = path.stat().st_size
    if size == 0:
        return None
    with open(path, "rb") as f:
        pos = 0
        for _ in range(max_fields):
            if pos == size:
                return fields
            f.seek(pos)
            head = f.read(20)
            try:
                key, p = _varint(head, 0)
                field, wtype = key >> 3, key & 7
                if field == 0:
                    return None
                if wtype == 0:
                    _, p = _varint(head, p)
                    pos += p
                elif wtype == 1:
                    pos += p + 8
                elif wtype == 5:
                    pos += p + 4
                elif wtype == 2:
                    length, p = _varint(head, p)
                    pos += p + length
                else:
                    return None
            except ValueError:
                return None
            if pos > size:
                return None
            fields.setdefault(field, set()).add(wtype)
    return fields
