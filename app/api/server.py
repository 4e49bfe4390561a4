"""The HTTP server's side of the request limits (see app/api/guards.py for the ASGI side): uvicorn's
httptools protocol with a deadline and a size bound on each request's headers. uvicorn itself bounds
only the idle time between requests (``timeout_keep_alive``), so a client that sends its headers a
byte at a time would otherwise hold the connection forever.

A module-level class (uvicorn may pickle its config for worker processes); its limits come from
the settings (``MODELPORT_REQUEST_HEADER_TIMEOUT_S``, ``MODELPORT_MAX_HEADER_BYTES``)."""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout_s: float | None = None  # None: from the settings
    max_header_bytes: int | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.header_timeout_s is None or self.max_header_bytes is None:
            from app.config import get_settings

            s = get_settings()
            self.header_timeout_s = s.request_header_timeout_s if self.header_timeout_s is None else self.header_timeout_s
            self.max_header_bytes = s.max_header_bytes if self.max_header_bytes is None else self.max_header_bytes
        self._header_timer = None
        self._header_bytes = 0
        self._in_headers = True

    def connection_made(self, transport):
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self._in_headers and not self.transport.is_closing():
            self._refuse(b"408 Request Timeout", b"request headers took too long")

    def _refuse(self, status: bytes, text: bytes) -> None:
        self.transport.write(b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain\r\nconnection: close\r\n"
                             b"content-length: " + str(len(text)).encode() + b"\r\n\r\n" + text)
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._in_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        # still reading headers after this many bytes (a chunk that also held the body start has ended them)
        if self._in_headers and self._header_bytes > self.max_header_bytes and not self.transport.is_closing():
            self._disarm()
            self._refuse(b"431 Request Header Fields Too Large", b"request headers are too large")

    def on_message_begin(self) -> None:
        self._in_headers = True
        self._arm()
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._header_bytes = 0  # the next request counts from its own first byte
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc):
        self._disarm()
        super().connection_lost(exc)
