"""What every request passes before a route sees it, and what the HTTP server enforces per
connection.

- ``RequestGuard`` (ASGI): a path or query string holding NUL or another control character is
  refused (422; SQLite cut names at NUL, PostgreSQL refuses it); a JSON body of the routes that
  take small JSON documents is capped (``MODELPORT_MAX_JSON_BODY_BYTES``, 413, checked against
  Content-Length first and while it arrives); a body whose next chunk takes longer than
  ``MODELPORT_REQUEST_BODY_TIMEOUT_S`` is abandoned with 408 (a slow client cannot hold a
  connection and a worker thread forever).
- rate limits per client (its API key's id, else its address) on the upload routes
  (``MODELPORT_RATE_LIMIT_UPLOADS_PER_MINUTE``) and the inference routes
  (``MODELPORT_RATE_LIMIT_INFERENCE_PER_SECOND``): token buckets, 429 with Retry-After; 0 = off.
- ``app.api.server.GuardedHttpToolsProtocol`` (uvicorn): a request whose headers are not complete within
  ``MODELPORT_REQUEST_HEADER_TIMEOUT_S`` of its first byte (or of the connection) is closed with
  408, and header bytes past ``MODELPORT_MAX_HEADER_BYTES`` get 431 — uvicorn bounds only the
  idle time between requests (``timeout_keep_alive``)."""

from __future__ import annotations

import asyncio
import json
import re
from urllib.parse import unquote_to_bytes

from app.errors import ModelportError

# routes whose bodies are not small JSON documents: uploads, samples, calibration sets and inference have their own
# limits
_BULK_SUFFIXES = ("/samples", "/calibration-sets", "/predict", "/infer")


class RequestTimeout(ModelportError):
    status_code = 408
    code = "request_timeout"


_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")


def _bad_chars(raw: bytes) -> bool:
    decoded = unquote_to_bytes(raw) if b"%" in raw else raw
    return _CONTROL.search(decoded) is not None


class RequestGuard:
    def __init__(self, app, settings):
        self.app, self.settings = app, settings
        self.uploads = Buckets(settings.rate_limit_uploads_per_minute / 60.0, settings.rate_limit_uploads_per_minute)
        rate = settings.rate_limit_inference_per_second
        self.inference = Buckets(rate, max(1.0, rate))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("modelport.guarded"):
            return await self.app(scope, receive, send)
        scope["modelport.guarded"] = True
        path = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
        if _bad_chars(path) or _bad_chars(scope.get("query_string", b"")):
            return await _answer(send, scope, 422, "invalid_request",
                                 "the path or query string holds a NUL or control character")
        refused = self._rate_limited(scope)
        if refused is not None:
            return await refused(send)
        limit = self._json_limit(scope)
        if limit is not None:
            declared = _header(scope, b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                return await _answer(send, scope, 413, "payload_too_large",
                                     f"a JSON body of this route may have at most {limit} bytes "
                                     "(MODELPORT_MAX_JSON_BODY_BYTES)")
        await self.app(scope, self._receive(receive, limit), send)

    def passes_now(self, scope) -> bool:
        """Whether an inference request can be answered without this guard having a word: no control
        character in its path or query string, and no rate limit on inference to count it against
        (the HTTP protocol's direct answers, app.api.fastpath.FastPath.answer_now)."""
        path = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
        return self.inference.rate <= 0 and not _bad_chars(path) and not _bad_chars(scope.get("query_string", b""))

    def _rate_limited(self, scope):
        method, path = scope["method"], scope["path"]
        if method == "POST" and (path.endswith("/predict") or path.endswith("/infer")):
            buckets, what = self.inference, "inference requests (MODELPORT_RATE_LIMIT_INFERENCE_PER_SECOND)"
        elif (method == "POST" and path.rstrip("/") == "/v1/models") or (method == "PUT" and path.endswith("/samples")) \
                or (method == "POST" and path.rstrip("/").endswith("/calibration-sets")):
            buckets, what = self.uploads, "uploads (MODELPORT_RATE_LIMIT_UPLOADS_PER_MINUTE)"
        else:
            return None
        if buckets.rate <= 0:  # off (the default): no client to tell apart
            return None
        wait = buckets.take(_client_id(scope))
        if wait is None:
            return None

        async def refuse(send):
            await _answer(send, scope, 429, "rate_limited", f"too many {what} from this client; retry in {wait:.1f} s",
                          headers=[(b"retry-after", str(max(1, int(wait + 0.999))).encode())])

        return refuse

    def _json_limit(self, scope) -> int | None:
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return None
        path = scope["path"]
        if path.rstrip("/") == "/v1/models" or path.endswith(_BULK_SUFFIXES):
            return None
        return self.settings.max_json_body_bytes

    def _receive(self, receive, limit: int | None):
        timeout = self.settings.request_body_timeout_s
        seen = 0

        async def guarded():
            nonlocal seen
            try:  # asyncio's own timeout: the servers here run asyncio, and anyio's costs ~2.5x as much a call
                async with asyncio.timeout(timeout):
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


async def _answer(send, scope, status: int, code: str, message: str, headers=()) -> None:
    if scope["path"].startswith("/v2/"):
        body = json.dumps({"error": message}).encode()
    else:
        body = json.dumps({"error": {"code": code, "message": message, "detail": {}}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})



def _client_id(scope) -> str:
    """Whom a rate limit counts: the API key's id (``mp_<id>_…``: never the secret), else the address."""
    for name in (b"authorization", b"x-api-key"):
        value = _header(scope, name)
        if value:
            m = re.search(r"mp_([0-9a-f]{8})_", value)
            if m:
                return "key:" + m.group(1)
    client = scope.get("client") or ("?", 0)
    return "addr:" + str(client[0])


class Buckets:
    """Token buckets per client: ``rate`` tokens a second, ``burst`` at most; rate 0 is no limit.
    At most ``MAX_CLIENTS`` are remembered (the least recently seen go first)."""

    MAX_CLIENTS = 10_000

    def __init__(self, rate: float, burst: float):
        from collections import OrderedDict

        self.rate, self.burst = rate, burst
        self.state: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, client: str) -> float | None:
        """None when ``client`` may go on now (a token taken), else the seconds until it may."""
        import time

        if self.rate <= 0:
            return None
        now = time.monotonic()
        tokens, seen = self.state.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - seen) * self.rate)
        if tokens >= 1:
            self.state[client] = (tokens - 1, now)
            wait = None
        else:
            self.state[client] = (tokens, now)
            wait = (1 - tokens) / self.rate
        while len(self.state) > self.MAX_CLIENTS:
            self.state.popitem(last=False)
        return wait
