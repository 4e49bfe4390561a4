"""Budgets on hostile input that more than one stage needs: how deep a JSON value may nest, how
big a zip's central directory may be before anything parses it, what a name may hold before it
reaches a header or the filesystem, and integers written in ASCII digits only.

Pure functions of bytes and values; no HTTP, no database. Each refusal raises ``ValueError`` with a
message meant for the client; callers wrap it in their own error (4xx)."""

from __future__ import annotations

import struct
from typing import Any


class OverBudget(ValueError):
    """Input over one of these budgets; the message says which and by how much."""


MAX_JSON_DEPTH = 32
"""How deep user JSON stored in the catalog (upload metadata, options) may nest."""

NAME_COMPONENT_BYTES = 255
"""The longest path component most filesystems take (ext4, xfs, APFS: 255 bytes)."""

ECHO_CHARS = 200
"""How much of a client-chosen name an error message repeats."""


def json_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> int:
    """The nesting depth of a JSON value (a scalar is 0), counted without recursion; stops counting
    past ``limit`` + 1, so a hostile value costs no more than that."""
    deepest = 0
    stack = [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            d += 1
            deepest = max(deepest, d)
            if deepest > limit:
                return deepest
            stack.extend((x, d) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def raw_json_depth(raw: str | bytes, limit: int = MAX_JSON_DEPTH) -> int:
    """An upper bound of the nesting depth of JSON text, from its brackets outside strings, without
    parsing it (so a value too deep for the parser never reaches it); stops past ``limit``."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    depth = deepest = 0
    in_str = esc = False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return deepest
        elif ch in "]}":
            depth -= 1
    return deepest


def echo(name: str, limit: int = ECHO_CHARS) -> str:
    """A client-chosen name as an error message may repeat it: at most ``limit`` characters."""
    return name if len(name) <= limit else f"{name[:limit]}… ({len(name)} characters)"


def check_name_chars(name: str, what: str = "name", *, components: bool = True) -> None:
    """Refuse what must never reach a header or a file name: NUL and other control characters
    (CR/LF split headers), and path components longer than the filesystem takes."""
    bad = next((c for c in name if ord(c) < 0x20 or ord(c) == 0x7F), None)
    if bad is not None:
        raise ValueError(f"{what} {echo(name)!r} holds a control character ({bad!r}); names may not")
    for part in name.replace("\\", "/").split("/") if components else ():
        n = len(part.encode("utf-8", "surrogatepass"))
        if n > NAME_COMPONENT_BYTES:
            raise ValueError(f"{what} {echo(name)!r} has a path component of {n} bytes; at most "
                             f"{NAME_COMPONENT_BYTES} are allowed")


def ascii_int(text: str | None) -> int | None:
    """``text`` as a non-negative integer when it is ASCII digits only (``"²".isdigit()`` is True
    but ``int("²")`` fails), else None."""
    if not text or not text.isascii() or not text.isdigit():
        return None
    return int(text)


_EOCD = struct.Struct("<4s4H2LH")  # end of central directory: sig, disk, cd disk, entries here, total, size, offset, comment
_EOCD64_LOC = struct.Struct("<4sLQL")  # zip64 EOCD locator: sig, disk, offset of the zip64 EOCD, disks
_EOCD64 = struct.Struct("<4sQ2H2L4Q")  # zip64 EOCD: sig, size, versions, disks, entries here, total, size, offset


def zip_directory(tail: bytes, file_size: int) -> tuple[int, int] | None:
    """(entries, central directory bytes) a zip says it holds, read from the last bytes of the file
    (``tail``: at least its last 64 KiB + 22 bytes, or the whole file), before ``zipfile`` builds
    one object per entry; None when no end-of-central-directory record is there. A zip64 archive's
    figures come from its zip64 record when ``tail`` holds it."""
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < _EOCD.size:
        return None
    _, _, _, _, entries, cd_size, _, _ = _EOCD.unpack_from(tail, at)
    if (entries == 0xFFFF or cd_size == 0xFFFFFFFF) and at >= _EOCD64_LOC.size:
        sig, _, offset, _ = _EOCD64_LOC.unpack_from(tail, at - _EOCD64_LOC.size)
        start = offset - (file_size - len(tail))
        if sig == b"PK\x06\x07" and 0 <= start <= len(tail) - _EOCD64.size:
            rec = _EOCD64.unpack_from(tail, start)
            if rec[0] == b"PK\x06\x06":
                entries, cd_size = rec[6], rec[7]
    return entries, cd_size


ZIP_ENTRY_BYTES = 46 + 1024 + 512
"""What one central-directory entry may take: the fixed part, a 1 KiB name, some extra fields."""


def check_zip_directory(tail: bytes, file_size: int, max_entries: int, what: str = "the archive") -> None:
    """Refuse a zip whose central directory names more than ``max_entries`` entries, or is bigger
    than that many entries take (``zipfile`` walks the directory by its size, not its count)."""
    found = zip_directory(tail, file_size)
    if found is None:
        return  # not a zip as far as its end says: zipfile will refuse it
    entries, cd_size = found
    if entries > max_entries:
        raise OverBudget(f"{what} has {entries} members, over the limit of {max_entries}")
    if cd_size > max_entries * ZIP_ENTRY_BYTES:
        raise OverBudget(f"{what}'s central directory is {cd_size} bytes, more than {max_entries} members need")


def zip_tail(f, size: int) -> bytes:
    """The bytes :func:`check_zip_directory` reads: the last 64 KiB + 22 of an open file."""
    n = min(size, 65536 + _EOCD.size + _EOCD64.size + _EOCD64_LOC.size)
    f.seek(size - n)
    return f.read(n)


RENDER_DEPTH = 64
"""Stored values deeper than this are not rendered (what inspection writes nests far less)."""


def renderable(value: Any, limit: int = RENDER_DEPTH) -> Any:
    """A stored JSON value as a response can always carry it: the value itself when it is (the
    common case, one walk), else a copy with non-finite floats as None and, past ``limit`` levels,
    a note in place of the rest. A row stored before a check existed must not fail a whole list."""
    import math

    stack, bad = [(value, 0)], False
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            if d >= limit:
                bad = True
                break
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
        elif isinstance(v, float) and not math.isfinite(v):
            bad = True
            break
    if not bad:
        return value

    def clean(v: Any, d: int) -> Any:  # recursion bounded by ``limit``
        if isinstance(v, dict | list) and d >= limit:
            return {"omitted": f"nested deeper than {limit} levels"}
        if isinstance(v, dict):
            return {k: clean(x, d + 1) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x, d + 1) for x in v]
        return None if isinstance(v, float) and not math.isfinite(v) else v

    return clean(value, 0)


def content_disposition(filename: str, fallback: str = "download") -> str:
    """``attachment`` with the file name quoted per RFC 6266: an ASCII ``filename="…"`` (quotes,
    backslashes, control and non-ASCII characters replaced) and, when that lost anything, the exact
    name as RFC 5987 ``filename*=UTF-8''…`` (percent-encoded), so no name can break the header."""
    from urllib.parse import quote

    name = filename.rsplit("/", 1)[-1] or fallback
    ascii_name = "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\' else "_" for c in name)
    header = f'attachment; filename="{ascii_name}"'
    if ascii_name != name:
        header += "; filename*=UTF-8''" + quote(name.encode("utf-8", "surrogatepass"), safe="")
    return header


def has_nul(value: Any) -> bool:
    """Whether a NUL character hides in a JSON value's strings or keys (PostgreSQL's text and jsonb
    refuse it; SQLite cuts strings at it)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if "\x00" in v:
                return True
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


def without_nul(value: Any) -> Any:
    """A JSON value made by a reader of hostile bytes, storable: NUL characters dropped from its
    strings and keys (the value itself when it holds none)."""
    if not has_nul(value):
        return value
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {without_nul(k): without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_nul(v) for v in value]
    return value
