"""The inference core, framework-free (MLServer's dataplane): one v2 inference and one v1
prediction, each from a request body and a few header values to (status, headers, body). The
FastAPI routes and the ASGI fast path (``app.api.fastpath``) both call these; nothing here knows
an HTTP framework."""

from __future__ import annotations

import json
import time

import anyio

from app.errors import BadRequest, ModelportError, Unprocessable
from app.serving.runtime import ServingError

NPY_MAGIC, ZIP_MAGIC = b"\x93NUMPY", b"PK\x03\x04"


async def loaded(state, name: str, version: str | None):
    cache = state.models
    row = await cache.aresolve(name, version)
    if row["id"] in cache.loaded:
        return row, cache.get(row, name)
    return row, await anyio.to_thread.run_sync(cache.get, row, name)


def _error_body(status: int, message: str) -> tuple[int, dict[str, str], bytes]:
    return status, {"content-type": "application/json"}, json.dumps({"error": message}).encode()


async def run_infer(state, name: str, version: str | None, header_length: str | None,
                body: bytes, batching: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """One v2 inference, independent of the HTTP framework: (status, headers, body). Used by the
    FastAPI route and by the ASGI fast path (app.api.fastpath) alike. ``batching``: the request's
    ``X-Modelport-Batching`` header (ModelCache.batcher_for)."""
    from app.serving import codec

    metrics = state.metrics
    started = time.perf_counter()
    labels = ("_unknown", "")  # until the name resolves: client-chosen names must not mint metric series
    try:
        row, lm = await loaded(state, name, version)
        labels = (name, str(row["version"]))
        try:
            hl = int(header_length) if header_length is not None else None
        except ValueError:
            raise codec.CodecError(f"Inference-Header-Content-Length must be an integer, got {header_length!r}") \
                from None
        req = codec.decode_v2_request(body, hl)
        codec.check_inputs(req.inputs, lm.specs())
        batcher = state.models.batcher_for(lm, batching)
        t = time.perf_counter()
        outputs = await state.models.predict(lm, req.inputs, batcher)
        if batcher is None:
            first = next(iter(req.inputs.values()), None)
            metrics.unbatched(*labels, first.shape[0] if first is not None and first.ndim else 1,
                              time.perf_counter() - t)
        requested = [o["name"] for o in req.outputs] or None
        per_output = {o["name"]: o.get("binary_data") for o in req.outputs}

        def binary(out_name: str) -> bool:
            flag = per_output.get(out_name)
            return req.binary_output_default if flag is None else bool(flag)

        payload, headers = codec.encode_v2_response(name, str(row["version"]), req.id, outputs, binary=binary,
                                                    requested=requested)
    except ServingError as e:  # as Triton maps its errors: NOT_FOUND 404, UNAVAILABLE 503, the rest 400
        metrics.failure.labels(*labels, e.code).inc()
        return _error_body(e.status if e.status in (404, 503) else 400, e.message)
    except codec.CodecError as e:
        metrics.failure.labels(*labels, "bad_input").inc()
        return _error_body(400, str(e))
    except Exception as e:
        metrics.failure.labels(*labels, "inference_error").inc()
        return _error_body(500, f"inference failed: {type(e).__name__}: {e}"[:2000])
    metrics.success.labels(*labels).inc()
    metrics.request.labels(*labels).observe(time.perf_counter() - started)
    return 200, {k.lower(): v for k, v in headers.items()}, payload


async def run_predict(state, name: str, version: str | None, content_type: str, accept: str,
                      body: bytes, batching: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """One v1 prediction, independent of the HTTP framework: (status, headers, body). Used by the
    FastAPI route and by the ASGI fast path (app.api.fastpath) alike. ``batching`` as for run_infer."""
    from app.serving import codec

    cache, metrics = state.models, state.metrics
    started = time.perf_counter()
    labels = ("_unknown", "")  # until the name resolves: client-chosen names must not mint metric series
    try:
        row = await cache.aresolve(name, version)
        labels = (name, str(row["version"]))
        lm = cache.get(row, name) if row["id"] in cache.loaded else await anyio.to_thread.run_sync(cache.get, row, name)
        ctype = content_type.split(";")[0].strip().lower()
        if ctype in ("application/x-npz",) or (not ctype.endswith("json") and body[:4] == ZIP_MAGIC):
            feeds = codec.decode_npz(body)
        elif ctype in ("application/x-npy",) or (not ctype.endswith("json") and body[:6] == NPY_MAGIC):
            if len(lm.inputs) != 1:
                raise codec.CodecError(f"a .npy body is one array, but this model takes {len(lm.inputs)} inputs "
                                       f"({', '.join(s.name for s in lm.inputs)}): send an .npz")
            feeds = {lm.inputs[0].name: codec.decode_npy(body)}
        else:
            try:
                obj = codec.loads(body)
            except ValueError as e:
                raise codec.CodecError(f"the body is not JSON, .npy or .npz: {e}") from None
            feeds = codec.decode_v1_json(obj, {s.name: (s.dtype, s.shape) for s in lm.inputs})
        codec.check_inputs(feeds, lm.specs())
        batcher = cache.batcher_for(lm, batching)
        t = time.perf_counter()
        outputs = await cache.predict(lm, feeds, batcher)
        if batcher is None:
            first = next(iter(feeds.values()), None)
            metrics.unbatched(*labels, first.shape[0] if first is not None and first.ndim else 1,
                              time.perf_counter() - t)
    except ServingError as e:
        metrics.failure.labels(*labels, e.code).inc()
        return _error(e)
    except codec.CodecError as e:
        metrics.failure.labels(*labels, "bad_input").inc()
        return _error(BadRequest(str(e), code="bad_input"))
    except Exception as e:
        metrics.failure.labels(*labels, "inference_error").inc()
        return _error(Unprocessable(f"inference failed: {type(e).__name__}: {e}"[:2000], code="inference_failed"))
    metrics.success.labels(*labels).inc()
    metrics.request.labels(*labels).observe(time.perf_counter() - started)
    if "application/x-npz" in accept:
        return 200, {"content-type": "application/x-npz"}, codec.encode_npz(outputs)
    return 200, {"content-type": "application/json"}, codec.dumps_v1(outputs)


def _error(err: ModelportError) -> tuple[int, dict[str, str], bytes]:
    return err.status_code, {"content-type": "application/json"}, json.dumps(err.to_dict()).encode()

