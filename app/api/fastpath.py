"""An ASGI front for the two inference routes. ``POST /v2/models/{name}[/versions/{v}]/infer`` and
``POST /v1/deployments/{name}/predict`` go straight to their handlers (the same functions the
FastAPI routes call); everything else goes to FastAPI. Measured on 2 cores, FastAPI's routing,
dependency solving and middleware stack cost more per request than a small model's compute.

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


WORKER_HEADER = b"x-modelport-worker"


class FastPath:
    def __init__(self, app, settings=None):
        self.app = app
        self._entry = self._call
        self.worker = (WORKER_HEADER, str(os.getpid()).encode())
        if settings is not None:  # the request guard (app.api.guards) in front of both paths
            from app.api.guards import RequestGuard

            self._entry = RequestGuard(self._call, settings)

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
                return await self._v2(scope, receive, send, unquote(m.group(1)), m.group(2))
            m = V1.match(path)
            if m is not None:
                return await self._v1(scope, receive, send, unquote(m.group(1)))
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        worker = self.worker

        async def send_named(msg):
            if msg["type"] == "http.response.start":
                msg["headers"] = [*msg.get("headers", ()), worker]
            await send(msg)

        await self.app(scope, receive, send_named)

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

    @staticmethod
    def _headers(scope) -> dict[bytes, bytes]:
        return dict(scope["headers"])

    async def _send(self, send, status: int, headers: dict[str, str], body: bytes) -> None:
        raw = [(k.encode(), v.encode()) for k, v in headers.items()]
        raw.append((b"content-length", str(len(body)).encode()))
        raw.append(self.worker)
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})

    async def _principal(self, scope):
        """Who is asking (cached: no thread hop once a key has been seen), or the error to answer."""
        from app.errors import ModelportError

        h = self._headers(scope)
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

    async def _v2(self, scope, receive, send, name: str, version: str | None) -> None:
        from app.serving.dataplane import run_infer
        from app.serving.runtime import qualified

        principal, err = await self._principal(scope)
        if err is not None:
            return await self._send(send, err.status_code, {"content-type": "application/json"},
                                    json.dumps({"error": err.message}).encode())
        name = qualified(principal.project, name)

        try:
            body = await self._body(receive)
        except ConnectionError:
            return
        except OverflowError as e:
            return await self._send(send, 413, {"content-type": "application/json"},
                                    json.dumps({"error": str(e)}).encode())
        except ModelportError as e:  # the body stopped arriving (app.api.guards)
            return await self._send(send, e.status_code, {"content-type": "application/json", "connection": "close"},
                                    json.dumps({"error": e.message}).encode())
        h = self._headers(scope)
        hl, bm = h.get(b"inference-header-content-length"), h.get(b"x-modelport-batching")
        status, headers, payload = await run_infer(self.app.state, name, version,
                                                   hl.decode("latin-1") if hl is not None else None, body,
                                                   bm.decode("latin-1") if bm is not None else None)
        await self._send(send, status, headers, payload)

    async def _v1(self, scope, receive, send, name: str) -> None:
        from app.serving.dataplane import run_predict
        from app.serving.runtime import qualified

        principal, err = await self._principal(scope)
        if err is not None:
            return await self._send(send, err.status_code, {"content-type": "application/json"},
                                    json.dumps(err.to_dict()).encode())
        name = qualified(principal.project, name)

        try:
            body = await self._body(receive)
        except ConnectionError:
            return
        except OverflowError as e:
            err = {"error": {"code": "payload_too_large", "message": str(e), "detail": {}}}
            return await self._send(send, 413, {"content-type": "application/json"}, json.dumps(err).encode())
        except ModelportError as e:  # the body stopped arriving (app.api.guards)
            return await self._send(send, e.status_code, {"content-type": "application/json", "connection": "close"},
                                    json.dumps(e.to_dict()).encode())
        h = self._headers(scope)
        raw_qs = scope.get("query_string", b"")
        version = parse_qs(raw_qs.decode("latin-1")).get("version", [None])[0] if raw_qs else None
        bm = h.get(b"x-modelport-batching")
        status, headers, payload = await run_predict(
            self.app.state, name, version, h.get(b"content-type", b"").decode("latin-1"),
            h.get(b"accept", b"").decode("latin-1"), body, bm.decode("latin-1") if bm is not None else None)
        await self._send(send, status, headers, payload)
