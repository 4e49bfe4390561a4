"""The HTTP server's side of the request limits (see app/api/guards.py for the ASGI side): uvicorn's
httptools protocol with a deadline and a size bound on each request's headers. uvicorn itself bounds
only the idle time between requests (``timeout_keep_alive``), so a client that sends its headers a
byte at a time would otherwise hold the connection forever. The deadline's timer is armed only when
a read ends with headers still incomplete (a request that arrives whole costs no timer).

It also answers inference requests without ASGI where it can (``app.api.fastpath``): a request to
one of the two inference routes whose whole body came in the same read as its end is given to
``FastPath.answer_now`` and its answer written in one write; a request it declines, or one still
arriving when the read ends, starts its ASGI task as any other. Never for pipelined requests behind
an unfinished one, ``Expect: 100-continue`` or with the access log on.

A module-level class (uvicorn may pickle its config for worker processes); its limits come from
the settings (``MODELPORT_REQUEST_HEADER_TIMEOUT_S``, ``MODELPORT_MAX_HEADER_BYTES``)."""

from __future__ import annotations

import asyncio
import collections
import logging

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

ANSWERED = collections.Counter()
"""How this process's inference requests were answered: ``direct`` (FastPath.answer_now, from the
protocol's callback), ``direct_waited`` (the same, finished in a task after the handler waited) and
``asgi`` (handed to the ASGI app instead). Tests read it; nothing else does."""


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
        self._direct = None  # a request waiting for its body's end to be answered directly (its cycle)
        front = getattr(self.app, "answer_now", None)  # the app is modelport's FastPath (app.main.create_asgi)
        # with the access log on, every request goes through uvicorn's cycle, which writes it
        self._front = None if self.access_log and self.access_logger.isEnabledFor(logging.INFO) else front
        self._takes = getattr(self.app, "takes", None)
        self._written = getattr(self.app, "written", None)

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
        if self.transport.is_closing():  # refused (400, 408, 431) or closed by the answer
            self._direct = None
            return
        if self._direct is not None:  # its body goes on in a later read: the ASGI task reads it as usual
            cycle, self._direct = self._direct, None
            ANSWERED["asgi"] += 1
            super()._start_asgi_task(cycle, self.app)
        if not self._in_headers:
            return
        # still reading headers after this many bytes (a chunk that also held the body start has ended them)
        if self._header_bytes > self.max_header_bytes:
            self._disarm()
            self._refuse(b"431 Request Header Fields Too Large", b"request headers are too large")
        else:
            self._arm()  # the deadline counts from the read that began them

    def on_message_begin(self) -> None:
        self._in_headers = True
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._header_bytes = 0  # the next request counts from its own first byte
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc):
        self._disarm()
        self._direct = None
        super().connection_lost(exc)

    # ------------------------------------------------------------------ inference without ASGI

    def _start_asgi_task(self, cycle, app) -> None:
        if (self._front is not None and app is self.app and cycle.scope["method"] == "POST"
                and not cycle.waiting_for_100_continue and self._takes(cycle.scope["path"])):
            if not cycle.more_body:  # a pipelined request whose turn came: all of it is here
                return self._answer(cycle)
            self._direct = cycle  # answered at its end if that comes in this read (on_message_complete)
            return None
        return super()._start_asgi_task(cycle, app)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        cycle = self._direct
        if cycle is not None and cycle is self.cycle:
            self._direct = None
            self._answer(cycle)

    def _answer(self, cycle) -> None:
        try:
            answer = self._front(cycle.scope, bytes(cycle.body))
        except Exception as e:  # the handler failed: what uvicorn does for an ASGI app that raised
            self.logger.error("Exception in the inference handler", exc_info=e)
            answer = (500, [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close")],
                      b"Internal Server Error")
        if answer is None:
            ANSWERED["asgi"] += 1
            return super()._start_asgi_task(cycle, self.app)  # the body waits in cycle.body for receive()
        if isinstance(answer, tuple):
            ANSWERED["direct"] += 1
            return self._write(cycle, *answer)
        task = self.loop.create_task(self._finish(cycle, answer))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)  # uvicorn's shutdown waits for it, as for an ASGI task
        return None

    async def _finish(self, cycle, pending) -> None:
        try:
            status, headers, body = await pending
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.logger.error("Exception in the inference handler", exc_info=e)
            status, headers, body = 500, [(b"content-type", b"text/plain; charset=utf-8"),
                                          (b"connection", b"close")], b"Internal Server Error"
        ANSWERED["direct_waited"] += 1
        if not cycle.disconnected:
            self._write(cycle, status, headers, body)

    def _write(self, cycle, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """The response in one write, as uvicorn's ``RequestResponseCycle.send`` writes it (its default
        headers first; Connection: close when the connection won't be kept), then what it does next."""
        content = [STATUS_LINE[status]]
        for name, value in (*cycle.default_headers, *headers):
            if name == b"connection" and b"close" in value.lower():
                cycle.keep_alive = False
            content += (name, b": ", value, b"\r\n")
        if not cycle.keep_alive and not any(n == b"connection" for n, _ in headers):
            content.append(b"connection: close\r\n")
        content += (b"\r\n", body)
        cycle.response_started = cycle.response_complete = True
        self.transport.write(b"".join(content))
        cycle.message_event.set()
        if not cycle.keep_alive:
            self.transport.close()
        cycle.on_response()
        self._written()  # what waited for the answer to be on its way (FastPath.written)
