"""Request-body streaming for uploads: raw bodies and multipart, written to disk while hashing,
within the upload limit. HTTP-only; what it received goes to ``app.ingest.uploads.ingest``."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from starlette.requests import Request

from app.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from app.ingest.uploads import Received, Upload, check_name
from app.limits import MAX_JSON_DEPTH, ascii_int, check_name_chars, has_nul, raw_json_depth

FLUSH = 4 * 1024 * 1024
_IO_POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="modelport-upload")  # hand work to a thread in 4 MiB pieces: one hop per piece, not per network chunk
RAW_TYPES = {"application/octet-stream", "application/zip", "application/x-zip-compressed", "application/gzip",
             "application/x-gzip", "application/x-tar", "application/x-compressed-tar", ""}
# zip layouts that are models themselves, not directories to unpack


class _Sink:
    """Writes one file and hashes it. Network chunks are gathered into 4 MiB pieces; each piece is
    hashed and written on a thread while the next one is received (one piece in flight)."""

    def __init__(self, rec: Received, budget: _Budget):
        self.rec = rec
        self.budget = budget
        self.fh = open(rec.tmp, "wb")  # noqa: SIM115 - closed in close()
        self.h = hashlib.sha256()
        self.buf = bytearray()
        self.pending: asyncio.Future | None = None

    async def write(self, data: bytes) -> None:
        self.budget.add(len(data))
        self.buf += data
        if len(self.buf) >= FLUSH:
            await self.flush()

    def _flush_sync(self, chunk: bytearray) -> None:
        self.h.update(chunk)
        self.fh.write(chunk)

    async def flush(self) -> None:
        if self.buf:
            chunk, self.buf = self.buf, bytearray()
            if self.pending is not None:
                await self.pending
            self.pending = asyncio.wrap_future(_IO_POOL.submit(self._flush_sync, chunk))

    async def close(self) -> None:
        try:
            await self.flush()
            if self.pending is not None:
                await self.pending
        finally:
            if self.pending is not None and not self.pending.done():
                await asyncio.wait([self.pending])
            self.fh.close()
        self.rec.sha256 = self.h.hexdigest()
        self.rec.size = self.rec.tmp.stat().st_size


class _Budget:
    def __init__(self, limit: int):
        self.limit, self.total = limit, 0

    def add(self, n: int) -> None:
        self.total += n
        if self.total > self.limit:
            raise PayloadTooLarge(f"upload is larger than the limit of {self.limit} bytes "
                                  "(MODELPORT_MAX_UPLOAD_BYTES)", detail={"limit_bytes": self.limit})


async def receive(request: Request, settings, *, filename: str | None, name: str | None,
                  metadata: str | None) -> Upload:
    """Stream the request body into a fresh work directory. Caller removes ``upload.workdir``."""
    declared = ascii_int(request.headers.get("content-length"))
    if declared is not None and declared > settings.max_upload_bytes + 64 * 1024:
        raise PayloadTooLarge(f"upload is larger than the limit of {settings.max_upload_bytes} bytes "
                              "(MODELPORT_MAX_UPLOAD_BYTES)", detail={"limit_bytes": settings.max_upload_bytes})
    from starlette.requests import ClientDisconnect

    workdir = settings.tmp_dir / f"upload-{uuid.uuid4().hex}"
    (workdir / "in").mkdir(parents=True)
    up = Upload(workdir=workdir, name=name)
    try:
        up.metadata = _parse_metadata(metadata)
        ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        budget = _Budget(settings.max_upload_bytes)
        if ctype == "multipart/form-data":
            await _receive_multipart(request, up, budget, settings)
        elif ctype in RAW_TYPES:
            fname = filename or _disposition_filename(request.headers.get("content-disposition", ""))
            if not fname:
                raise BadRequest("a raw upload needs a file name: pass ?filename=model.onnx (or a "
                                 "Content-Disposition header), or send multipart/form-data", code="missing_filename")
            rec = Received(path=check_name(fname), tmp=workdir / "in" / "0")
            sink = _Sink(rec, budget)
            try:
                async for chunk in _body(request, up):
                    await sink.write(chunk)
            finally:
                await sink.close()
            up.files.append(rec)
        else:
            raise UnsupportedMediaType(
                f"content type '{ctype}' is not accepted: send multipart/form-data, or the raw file as "
                "application/octet-stream (or application/zip, application/gzip, application/x-tar)",
                code="unsupported_content_type")
        if declared is not None and up.body_bytes != declared:
            raise BadRequest(f"the body has {up.body_bytes} bytes but Content-Length said {declared}",
                             code="upload_interrupted")
        if not up.files:
            raise BadRequest("no file in the upload: add one or more file parts", code="empty_upload")
        for rec in up.files:
            if rec.size == 0:
                raise BadRequest(f"'{rec.path}' is empty (0 bytes)", code="empty_upload", detail={"file": rec.path})
        up.original_filename = up.files[0].path if len(up.files) == 1 else None
        if up.name is not None:
            try:
                check_name_chars(up.name[:255], "the model name", components=False)
            except ValueError as e:
                raise BadRequest(str(e), code="bad_name") from None
        return up
    except ClientDisconnect:
        shutil.rmtree(workdir, ignore_errors=True)
        raise BadRequest("the client disconnected before the upload finished", code="upload_interrupted") from None
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise


async def _body(request: Request, up: Upload):
    async for chunk in request.stream():
        up.body_bytes += len(chunk)
        yield chunk


def _parse_metadata(raw: str | None) -> dict[str, Any]:
    """The metadata JSON object, checked before it is parsed and stored: at most 64 KiB, nested at most
    ``MAX_JSON_DEPTH`` deep (a stored value must render in every later list)."""
    if raw is None or raw == "":
        return {}
    if len(raw) > 64 * 1024:
        raise BadRequest("metadata is larger than 64 KiB", code="bad_metadata")
    if raw_json_depth(raw) > MAX_JSON_DEPTH:
        raise BadRequest(f"metadata nests deeper than {MAX_JSON_DEPTH} levels", code="bad_metadata",
                         detail={"max_depth": MAX_JSON_DEPTH})
    try:  # NaN and infinities are not JSON (PostgreSQL's jsonb refuses them)
        value = json.loads(raw, parse_constant=_not_json, parse_float=_finite)
    except ValueError as e:
        raise BadRequest(f"metadata must be a JSON object: {e}", code="bad_metadata") from None
    if not isinstance(value, dict):
        raise BadRequest("metadata must be a JSON object", code="bad_metadata")
    if has_nul(value):
        raise BadRequest("metadata holds a NUL character (\\u0000), which cannot be stored", code="bad_metadata")
    return value


def _not_json(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    import math

    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"{text[:40]} is out of range for a number")
    return v


def _disposition_filename(header: str) -> str | None:
    from python_multipart.multipart import parse_options_header

    if not header:
        return None
    _, params = parse_options_header(header)
    v = params.get(b"filename")
    return v.decode("utf-8", "replace") if v else None


async def _receive_multipart(request: Request, up: Upload, budget: _Budget, settings) -> None:
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(request.headers["content-type"])
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadRequest("multipart body without a boundary", code="bad_multipart")

    state: dict[str, Any] = {"headers": {}, "field": b"", "value": b"", "sink": None, "text": None}
    pending: list[tuple[str, Any]] = []  # parser callbacks are sync; queue work for the async loop
    fields: dict[str, bytes] = {}

    def on_part_begin() -> None:
        state["headers"] = {}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["field"].lower()] = state["value"]
        state["field"], state["value"] = b"", b""

    def on_headers_finished() -> None:
        disp, p = parse_options_header(state["headers"].get(b"content-disposition", b""))
        fname = p.get(b"filename")
        fieldname = p.get(b"name", b"").decode("utf-8", "replace")
        pending.append(("begin", (fieldname, fname.decode("utf-8", "replace") if fname is not None else None)))

    def on_part_data(data: bytes, start: int, end: int) -> None:
        pending.append(("data", data[start:end]))

    def on_part_end() -> None:
        pending.append(("end", None))

    def on_end() -> None:
        state["ended"] = True

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data, "on_part_end": on_part_end, "on_end": on_end,
    })
    sink: _Sink | None = None
    text: tuple[str, bytearray] | None = None
    seen: set[str] = set()
    try:
        async for chunk in _body(request, up):
            try:
                parser.write(chunk)
            except Exception as e:
                raise BadRequest(f"malformed multipart body: {e}", code="bad_multipart") from None
            for kind, value in pending:
                if kind == "begin":
                    fieldname, fname = value
                    if fname is not None:
                        if len(up.files) >= settings.max_files_per_upload:
                            raise BadRequest(f"more than {settings.max_files_per_upload} files in one upload",
                                             code="too_many_files")
                        if fname == "":
                            raise BadRequest(f"file part '{fieldname}' has an empty file name", code="bad_filename")
                        rel = check_name(fname)
                        if rel in seen:
                            raise BadRequest(f"file '{rel}' appears twice in the upload", code="duplicate_file")
                        clash = next((p for p in seen if p.startswith(rel + "/") or rel.startswith(p + "/")), None)
                        if clash is not None:
                            raise BadRequest(f"'{rel}' and '{clash}' cannot both be in one upload: one would have "
                                             "to be a file and a folder at once", code="duplicate_file")
                        seen.add(rel)
                        rec = Received(path=rel, tmp=up.workdir / "in" / str(len(up.files)))
                        up.files.append(rec)
                        sink = _Sink(rec, budget)
                    else:
                        text = (fieldname, bytearray())
                elif kind == "data":
                    if sink is not None:
                        await sink.write(value)
                    elif text is not None:
                        text[1].extend(value)
                        if len(text[1]) > 64 * 1024:
                            raise BadRequest(f"form field '{text[0]}' is larger than 64 KiB", code="bad_multipart")
                elif kind == "end":
                    if sink is not None:
                        await sink.close()
                        sink = None
                    elif text is not None:
                        fields[text[0]] = bytes(text[1])
                        text = None
            pending.clear()
        try:
            parser.finalize()
        except Exception as e:
            raise BadRequest(f"malformed multipart body: {e}", code="bad_multipart") from None
        if not state.get("ended"):
            raise BadRequest("the multipart body ended before its closing boundary (interrupted upload?)",
                             code="bad_multipart")
    finally:
        if sink is not None:
            await sink.close()
    if "name" in fields and up.name is None:
        up.name = fields["name"].decode("utf-8", "replace").strip() or None
    if "metadata" in fields and not up.metadata:
        up.metadata = _parse_metadata(fields["metadata"].decode("utf-8", "replace"))


# --------------------------------------------------------------------------- after the body


async def spool(request: Request, settings, *, limit: int, what: str, suffix: str = "") -> tuple[Path, str]:
    """The request body in a temporary file (with its SHA-256), at most ``limit`` bytes. The caller
    removes the file."""
    import tempfile

    h = hashlib.sha256()
    f = tempfile.NamedTemporaryFile(dir=settings.tmp_dir, delete=False, suffix=suffix)  # noqa: SIM115
    path = Path(f.name)
    try:
        with f:
            size = 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"{what} are larger than {limit} bytes", detail={"limit_bytes": limit})
                h.update(chunk)
                f.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path, h.hexdigest()
