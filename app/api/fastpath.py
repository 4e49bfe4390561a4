"""An ASGI front for the two inference routes. ``POST /v2/models/{name}[/versions/{v}]/infer`` and
``POST /v1/deployments/{name}/predict`` go straight to their handlers (the same functions the
FastAPI routes call); everything else goes to FastAPI. Measured on 2 cores, FastAPI's routing,
dependency solving and middleware stack cost more per request than a small model's compute.

Under modelport's own HTTP protocol (``app.api.server``) the two routes skip ASGI too:
:meth:`FastPath.answer_now` answers a request whose whole body has arrived, from the protocol's
callback, with no task and no ASGI messages, whenever nothing has to be waited for first (a key
seen before, the deployment resolved and loaded); the handler's coroutine runs until it first
waits, and only then goes on in a task. Anything else (a key to look up, a control character to
refuse, rate limits on, a body too big) takes the ASGI path below, where the request guard answers.

Every response names the process that answered it in ``X-Modelport-Worker`` (its pid): under
`modelport serve --workers N` that tells the N workers apart."""

from __future__ import annotations

import json
import os
import re
from urllib.parse import parse_qs, unquote

from app.errors import ModelportError

V2 = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")
V1 = re.compile(r"^/v1/deployments/([^/]+)/predict$")
_EITHER = re.compile(f"{V2.pattern}|{V1.pattern}")


WORKER_HEADER = b"x-modelport-worker"
JSON = {"content-type": "application/json"}


class FastPath:
    def __init__(self, app, settings=None):
        self.app = app
        self._entry = self._call
        self.guard = None
        self.worker = (WORKER_HEADER, str(os.getpid()).encode())
        if settings is not None:  # the request guard (app.api.guards) in front of both paths
            from app.api.guards import RequestGuard

            self._entry = self.guard = RequestGuard(self._call, settings)

    async def __call__(self, scope, receive, send):
        await self._entry(scope, receive, send)

    @property
    def state(self):  # the FastAPI app's state (tests and tools reach through the wrapper)
        return self.app.state

    async def _call(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            m = V2.match(path)
            if m is not None:
                return await self._v2(scope, receive, send, m)
            m = V1.match(path)
            if m is not None:
                return await self._v1(scope, receive, send, m)
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        worker = self.worker

        async def send_named(msg):
            if msg["type"] == "http.response.start":
                msg["headers"] = [*msg.get("headers", ()), worker]
            await send(msg)

        await self.app(scope, receive, send_named)

    # ------------------------------------------------------------------ without ASGI (app.api.server)

    @staticmethod
    def takes(path: str) -> bool:
        """Whether ``path`` is one of the two inference routes (a POST to it may be answered now)."""
        return _EITHER.match(path) is not None

    def answer_now(self, scope, body: bytes):
        """The answer to ``POST`` ``scope`` with all of ``body``, for the HTTP protocol: None when the
        request must go through ASGI (:meth:`__call__`); else ``(status, headers, body)`` with the
        headers as raw pairs (Content-Length and the worker's included), or, when the handler had to
        wait, an awaitable of that. Raises only what the handler raised (the protocol answers 500)."""
        path = scope["path"]
        m = V2.match(path)
        v1 = m is None
        if v1:
            m = V1.match(path)
            if m is None:
                return None
        guard = self.guard
        if guard is not None and not guard.passes_now(scope):
            return None
        state = self.app.state
        if len(body) > state.settings.serving_max_body_bytes:
            return None
        h = dict(scope["headers"])
        p = self._known(h)
        if p is None:
            return None
        call = (self._predict if v1 else self._infer)(state, scope, m, h, body, p)
        done, value = eager(call)
        return self._framed(*value) if done else self._framed_later(value)

    def _framed(self, status: int, headers: dict[str, str], body: bytes) -> tuple[int, list, bytes]:
        raw = [(k.encode(), v.encode()) for k, v in headers.items()]
        raw.append((b"content-length", str(len(body)).encode()))
        raw.append(self.worker)
        return status, raw, body

    async def _framed_later(self, pending):
        return self._framed(*await pending)

    def _known(self, h: dict[bytes, bytes]):
        """The principal of a key seen lately (no catalog query) allowed to read, else None."""
        authz, key = h.get(b"authorization"), h.get(b"x-api-key")
        p = self.app.state.auth.cached(authz.decode("latin-1") if authz else None,
                                       key.decode("latin-1") if key else None)
        if p is None:
            return None
        try:
            p.require("read")
        except ModelportError:
            return None
        return p

    # ------------------------------------------------------------------ the two routes

    @staticmethod
    def _infer(state, scope, m, h: dict[bytes, bytes], body: bytes, principal):
        from app.serving.dataplane import run_infer
        from app.serving.runtime import qualified

        hl, bm = h.get(b"inference-header-content-length"), h.get(b"x-modelport-batching")
        return run_infer(state, qualified(principal.project, unquote(m.group(1))), m.group(2),
                         hl.decode("latin-1") if hl is not None else None, body,
                         bm.decode("latin-1") if bm is not None else None)

    @staticmethod
    def _predict(state, scope, m, h: dict[bytes, bytes], body: bytes, principal):
        from app.serving.dataplane import run_predict
        from app.serving.runtime import qualified

        raw_qs = scope.get("query_string", b"")
        version = parse_qs(raw_qs.decode("latin-1")).get("version", [None])[0] if raw_qs else None
        bm = h.get(b"x-modelport-batching")
        return run_predict(state, qualified(principal.project, unquote(m.group(1))), version,
                           h.get(b"content-type", b"").decode("latin-1"), h.get(b"accept", b"").decode("latin-1"),
                           body, bm.decode("latin-1") if bm is not None else None)

    async def _body(self, receive) -> bytes:
        limit = self.app.state.settings.serving_max_body_bytes
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                raise ConnectionError("client disconnected")
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise OverflowError(f"the request body is larger than {limit} bytes (MODELPORT_SERVING_MAX_BODY_BYTES)")
            chunks.append(chunk)
            if not msg.get("more_body"):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _send(self, send, status: int, headers: dict[str, str], body: bytes) -> None:
        status, raw, body = self._framed(status, headers, body)
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})
        self.written()

    def written(self) -> None:
        """An answer is written: the metrics of the requests answered record now (Metrics.answered)."""
        self.app.state.metrics.flush()

    async def _principal(self, h: dict[bytes, bytes]):
        """Who is asking (cached: no thread hop once a key has been seen), or the error to answer."""
        authz, key = h.get(b"authorization"), h.get(b"x-api-key")
        authz, key = authz.decode("latin-1") if authz else None, key.decode("latin-1") if key else None
        auth = self.app.state.auth
        p = auth.cached(authz, key)
        try:
            if p is None:
                import anyio

                p = await anyio.to_thread.run_sync(auth.authenticate, authz, key)
            p.require("read")
        except ModelportError as e:
            return None, e
        except Exception as e:  # a key not seen lately and the catalog unreachable: 503 naming it, never a 500
            from app.main import _infrastructure_error

            err = _infrastructure_error(e)
            if err is None:
                raise
            return None, err
        return p, None

    async def _routed(self, scope, receive, send, m, call, error) -> None:
        """One inference request through ASGI: who asks, the body, then ``call``'s answer. ``error``
        writes an error document in the route's own shape."""
        h = dict(scope["headers"])
        principal, err = await self._principal(h)
        if err is not None:
            return await self._send(send, err.status_code, JSON, error(err.code, err.message, err.to_dict()))
        try:
            body = await self._body(receive)
        except ConnectionError:
            return
        except OverflowError as e:
            return await self._send(send, 413, JSON, error("payload_too_large", str(e), None))
        except ModelportError as e:  # the body stopped arriving (app.api.guards)
            return await self._send(send, e.status_code, {**JSON, "connection": "close"},
                                    error(e.code, e.message, e.to_dict()))
        await self._send(send, *await call(self.app.state, scope, m, h, body, principal))

    async def _v2(self, scope, receive, send, m) -> None:
        await self._routed(scope, receive, send, m, self._infer, _v2_error)

    async def _v1(self, scope, receive, send, m) -> None:
        await self._routed(scope, receive, send, m, self._predict, _v1_error)


def _v2_error(code: str, message: str, doc: dict | None) -> bytes:
    return json.dumps({"error": message}).encode()  # as Triton writes them


def _v1_error(code: str, message: str, doc: dict | None) -> bytes:
    return json.dumps(doc or {"error": {"code": code, "message": message, "detail": {}}}).encode()


def eager(coro):
    """Run ``coro`` until it first waits: ``(True, result)`` when it finished without waiting, else
    ``(False, awaitable)``, whose awaiting (in a task) goes on from where it stopped. It runs in the
    caller's callback, outside any task: what it calls before its first wait must not need one
    (anyio, asyncio.timeout); the serving handlers wait on futures only."""
    try:
        waiting_on = coro.send(None)
    except StopIteration as e:
        return True, e.value
    return False, _Rest(coro, waiting_on)


class _Rest:
    """The rest of a coroutine :func:`eager` started: awaiting it hands the task the future the
    coroutine waits on, then passes what the task sends or throws back into the coroutine."""

    __slots__ = ("coro", "waiting_on")

    def __init__(self, coro, waiting_on):
        self.coro, self.waiting_on = coro, waiting_on

    def __await__(self):
        coro, waiting_on = self.coro, self.waiting_on
        while True:
            try:
                sent = yield waiting_on
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as e:  # cancellation included: the coroutine decides
                try:
                    waiting_on = coro.throw(e)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    waiting_on = coro.send(sent)
                except StopIteration as stop:
                    return stop.value
