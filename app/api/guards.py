"""What every request passes before a route sees it, and what the HTTP server enforces per
connection.

- ``RequestGuard`` (ASGI): a path or query string holding NUL or another control character is
  refused (422; SQLite cut names at NUL, PostgreSQL refuses it); a JSON body of the routes that
  take small JSON documents is capped (``MODELPORT_MAX_JSON_BODY_BYTES``, 413, checked against
  Content-Length first and while it arrives); a body whose next chunk takes longer than
  ``MODELPORT_REQUEST_BODY_TIMEOUT_S`` is abandoned with 408 (a slow client cannot hold a
  connection and a worker thread forever).
- ``app.api.server.GuardedHttpToolsProtocol`` (uvicorn): a request whose headers are not complete within
  ``MODELPORT_REQUEST_HEADER_TIMEOUT_S`` of its first byte (or of the connection) is closed with
  408, and header bytes past ``MODELPORT_MAX_HEADER_BYTES`` get 431 — uvicorn bounds only the
  idle time between requests (``timeout_keep_alive``)."""

from __future__ import annotations

import json
from urllib.parse import unquote_to_bytes

from app.errors import ModelportError

# routes whose bodies are not small JSON documents: uploads, samples and inference have their own limits
_BULK_SUFFIXES = ("/samples", "/predict", "/infer")


class RequestTimeout(ModelportError):
    status_code = 408
    code = "request_timeout"


def _bad_chars(raw: bytes) -> bool:
    decoded = unquote_to_bytes(raw) if b"%" in raw else raw
    return any(b < 0x20 or b == 0x7F for b in decoded)


class RequestGuard:
    def __init__(self, app, settings):
        self.app, self.settings = app, settings

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("modelport.guarded"):
            return await self.app(scope, receive, send)
        scope["modelport.guarded"] = True
        path = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
        if _bad_chars(path) or _bad_chars(scope.get("query_string", b"")):
            return await _answer(send, scope, 422, "invalid_request",
                                 "the path or query string holds a NUL or control character")
        limit = self._json_limit(scope)
        if limit is not None:
            declared = _header(scope, b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                return await _answer(send, scope, 413, "payload_too_large",
                                     f"a JSON body of this route may have at most {limit} bytes "
                                     "(MODELPORT_MAX_JSON_BODY_BYTES)")
        await self.app(scope, self._receive(receive, limit), send)

    def _json_limit(self, scope) -> int | None:
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return None
        path = scope["path"]
        if path.rstrip("/") == "/v1/models" or path.endswith(_BULK_SUFFIXES):
            return None
        return self.settings.max_json_body_bytes

    def _receive(self, receive, limit: int | None):
        import anyio

        timeout = self.settings.request_body_timeout_s
        seen = 0

        async def guarded():
            nonlocal seen
            try:
                with anyio.fail_after(timeout):
                    msg = await receive()
            except TimeoutError:
                raise RequestTimeout(f"no part of the request body arrived for {timeout:g} s "
                                     "(MODELPORT_REQUEST_BODY_TIMEOUT_S)") from None
            if limit is not None and msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    from app.errors import PayloadTooLarge

                    raise PayloadTooLarge(f"a JSON body of this route may have at most {limit} bytes "
                                          "(MODELPORT_MAX_JSON_BODY_BYTES)")
            return msg

        return guarded


def _header(scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", ()):
        if k == name:
            return v.decode("latin-1")
    return None


async def _answer(send, scope, status: int, code: str, message: str) -> None:
    if scope["path"].startswith("/v2/"):
        body = json.dumps({"error": message}).encode()
    else:
        body = json.dumps({"error": {"code": code, "message": message, "detail": {}}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})

