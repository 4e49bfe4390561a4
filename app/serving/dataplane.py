"""The inference core, framework-free (MLServer's dataplane): one v2 inference and one v1
prediction, each from a request body and a few header values to (status, headers, body). The
FastAPI routes and the ASGI fast path (``app.api.fastpath``) both call these; nothing here knows
an HTTP framework."""

from __future__ import annotations

import asyncio
import json
import time

from app.errors import BadRequest, ModelportError, Unprocessable
from app.serving.runtime import ServingError

NPY_MAGIC, ZIP_MAGIC = b"\x93NUMPY", b"PK\x03\x04"
OFF_LOOP_BYTES = 64 * 1024
""".npz bodies this big are inflated on a thread (zlib lets go of the GIL): the event loop keeps answering."""
OFF_PROCESS_BYTES = 1024**2
"""JSON this big is parsed in a decoder process: parsing (orjson, then numpy over the lists) holds the
GIL for its whole length, so a thread would stall the event loop just the same (~3 s for 40 MB)."""
_decoders = None


class TooLarge(ServingError):
    """A request over the deployment's bounds (rows, input or output bytes): 413 before it runs."""

    def __init__(self, message: str):
        super().__init__(413, message, "request_too_large")


def bounds(state, row) -> tuple[int, int, int]:
    """(rows, input bytes, output bytes) one request may have: the settings' ceilings, lowered by
    the deployment's ``runtime.max_rows`` / ``runtime.max_output_mb``."""
    st, rt = state.settings, row.get("runtime") or {}
    rows = min(st.serving_max_rows, rt.get("max_rows") or st.serving_max_rows)
    out = st.serving_max_output_bytes
    if rt.get("max_output_mb"):
        out = min(out, int(rt["max_output_mb"] * 1024**2))
    return rows, st.serving_max_input_bytes, out


def check_json_budget(body: bytes | memoryview, max_input: int) -> None:
    """Before a JSON body is parsed: at most ``max_input`` bytes of text and a quarter as many
    elements (counted by its commas, at C speed) — what the inputs may decode to."""
    if len(body) > max_input:
        raise TooLarge(f"the JSON body has {len(body)} bytes; at most {max_input} are taken as JSON "
                       "(MODELPORT_SERVING_MAX_INPUT_BYTES): send tensors in binary (.npy/.npz, or the v2 binary "
                       "extension)")
    commas = bytes(body).count(b",") if isinstance(body, memoryview) else body.count(b",")
    if commas + 1 > max_input // 4:
        raise TooLarge(f"the JSON body holds up to {commas + 1} elements; at most {max_input // 4} are taken")


def check_bounds(lm, feeds, limits: tuple[int, int, int]) -> None:
    """413 before running: too many rows, too many input bytes, or outputs estimated past the bound
    (static output dims times the rows, or the bytes per row measured when the deployment loaded)."""
    max_rows, max_in, max_out = limits
    rows = max((a.shape[0] for a in feeds.values() if getattr(a, "ndim", 0)), default=1)
    if rows > max_rows:
        raise TooLarge(f"the request has {rows} rows; this deployment takes at most {max_rows} per request "
                       "(MODELPORT_SERVING_MAX_ROWS, runtime.max_rows): split it")
    size = sum(int(getattr(a, "nbytes", 0)) for a in feeds.values())
    if size > max_in:
        raise TooLarge(f"the inputs take {size} bytes; at most {max_in} are taken per request "
                       "(MODELPORT_SERVING_MAX_INPUT_BYTES)")
    est = estimated_output_bytes(lm, rows)
    if est is not None and est > max_out:
        raise TooLarge(f"the outputs of {rows} rows would take about {est} bytes, over this deployment's bound of "
                       f"{max_out} (MODELPORT_SERVING_MAX_OUTPUT_BYTES, runtime.max_output_mb): send fewer rows")


def rows_of(feeds) -> int:
    """The rows of a request: its first input's leading dim (1 for a scalar or no input)."""
    first = next(iter(feeds.values()), None)
    return first.shape[0] if first is not None and first.ndim else 1


def check_request(lm, feeds, limits: tuple[int, int, int]) -> None:
    """The inputs against the model's specs (codec.check_inputs) and the bounds (check_bounds); an
    outcome that depends only on each input's dtype and shape, so a passing one is remembered per
    loaded version (``PLANS_KEPT`` of them) and the next request like it is not checked again."""
    from app.serving import codec

    try:
        key = tuple((n, a.dtype, a.shape) for n, a in feeds.items())
    except AttributeError:  # not arrays: the checks say what they are
        key = None
    seen = lm.checked
    if key is not None and seen.get(key) == limits:
        return
    codec.check_inputs(feeds, lm.specs())
    check_bounds(lm, feeds, limits)
    if key is not None:
        remember(seen, key, limits)


def estimated_output_bytes(lm, rows: int) -> int | None:
    """Bytes the outputs of ``rows`` rows take: from the output specs where every dim past the batch
    is fixed, and from the bytes per row measured at load (the larger); None when neither says."""
    fixed, per_row_static, unknown = _static_outputs(lm)
    static = fixed + per_row_static * rows
    per_row = getattr(lm, "out_bytes_per_row", None)
    if per_row:
        return max(static, per_row * rows)
    return None if unknown and not static else static


def _static_outputs(lm) -> tuple[int, int, bool]:
    """What the output specs say, read once per loaded model: (bytes of outputs with a fixed first
    dim, bytes per row of those with a dynamic one, whether some output's size is unknown)."""
    cached = getattr(lm, "static_outputs", None)
    if cached is not None:
        return cached
    import math

    import numpy as np

    fixed = per_row = 0
    unknown = False
    for spec in lm.outputs or []:
        shape = spec.shape
        if not shape or not all(isinstance(d, int) and d >= 0 for d in shape[1:]):
            unknown = True
            continue
        try:
            item = np.dtype(spec.dtype).itemsize if spec.dtype not in (None, "object", "bfloat16") else 2
        except TypeError:
            item = 4
        if isinstance(shape[0], int) and shape[0] >= 0:
            fixed += shape[0] * math.prod(shape[1:]) * item
        else:
            per_row += math.prod(shape[1:]) * item
    cached = (fixed, per_row, unknown)
    if hasattr(lm, "static_outputs"):
        lm.static_outputs = cached
    return cached


def check_output_size(outputs, limits: tuple[int, int, int]) -> None:
    size = sum(int(getattr(v, "nbytes", 0)) for v in outputs.values())
    if size > limits[2]:
        raise TooLarge(f"the outputs take {size} bytes, over this deployment's bound of {limits[2]} "
                       "(MODELPORT_SERVING_MAX_OUTPUT_BYTES, runtime.max_output_mb): send fewer rows")


def _thread(fn, *args):
    """``fn(*args)`` on a thread, awaited as a plain future: the handlers here may start outside a
    task (app.api.fastpath.eager), where anyio's threads can't be asked for."""
    return asyncio.get_running_loop().run_in_executor(None, fn, *args)


async def _maybe_thread(big: bool, fn, *args):
    return await _thread(fn, *args) if big else fn(*args)


async def _maybe_process(big: bool, fn, *args):
    """``fn(*args)`` in the decoder process when ``big`` (its exceptions raised here), else inline."""
    if not big:
        return fn(*args)
    from concurrent.futures.process import BrokenProcessPool

    global _decoders
    if _decoders is None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        _decoders = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    pool = _decoders
    try:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
    except BrokenProcessPool:  # the decoder died (killed, out of memory): a fresh one for the next request
        if _decoders is pool:
            _decoders = None
        raise ServingError(503, "the JSON decoder process died while reading this request; retry it or send "
                           "tensors in binary", "decoder_unavailable") from None


def close_decoders() -> None:
    """Stop the decoder process, waiting for a decode under way (a server's shutdown: uvicorn ends
    the process by raising the SIGTERM it caught again, so no atexit handler would, and the child
    outlived its server)."""
    global _decoders
    pool, _decoders = _decoders, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


async def loaded(state, name: str, version: str | None):
    cache = state.models
    row = await cache.aresolve(name, version)
    if row["id"] in cache.loaded:
        return row, cache.get(row, name)
    return row, await _thread(cache.get, row, name)


PLAN_MAX_HEADER = 4096
"""v2 JSON headers up to this long are kept (codec.V2Plan), ``PLANS_KEPT`` per loaded version, as are
the input dtypes and shapes that passed check_request."""
PLANS_KEPT = 64


def remember(kept: dict, key, value) -> None:
    """``kept[key] = value``, at most ``PLANS_KEPT`` of them (a loaded version's plans and checked shapes)."""
    if len(kept) >= PLANS_KEPT:  # the oldest goes: a client sending unique ids or shapes can't grow it
        del kept[next(iter(kept))]
    kept[key] = value


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
        limits = bounds(state, row)
        plan = lm.v2_plans.get(body[:hl]) if hl is not None and 0 < hl <= PLAN_MAX_HEADER else None
        if plan is not None and plan.limits == limits and len(body) - hl == plan.binary_size:
            feeds = plan.feeds(body)  # a header decoded and checked before (codec.V2Plan)
        else:
            json_part = len(body) if hl is None else hl
            if json_part >= OFF_LOOP_BYTES:
                check_json_budget(memoryview(body)[:json_part], limits[1])
            req = await _maybe_process(json_part >= OFF_PROCESS_BYTES, codec.decode_v2_request, body, hl)
            feeds = req.inputs
            check_request(lm, feeds, limits)
            plan = codec.V2Plan.of(req, hl, len(body))
            if plan.reusable and 0 < hl <= PLAN_MAX_HEADER:
                plan.limits = limits
                remember(lm.v2_plans, bytes(body[:hl]), plan)
        batcher = state.models.batcher_for(lm, batching)
        t = time.perf_counter()
        try:
            outputs = await state.models.predict(lm, feeds, batcher)
        except ServingError:
            raise
        except Exception as e:  # the runtime refused these inputs (as Triton: INVALID_ARG, 400)
            raise InferenceFailed(f"inference failed: {type(e).__name__}: {e}"[:2000]) from None
        check_output_size(outputs, limits)
        compute_s = time.perf_counter() - t
        payload, headers = plan.encode(name, str(row["version"]), outputs)
    except ServingError as e:  # as Triton maps its errors: NOT_FOUND 404, UNAVAILABLE 503, the rest 400
        metrics.failure.labels(*labels, e.code).inc()
        return _error_body(e.status if e.status in (404, 413, 503) else 400, e.message)
    except InferenceFailed as e:
        metrics.failure.labels(*labels, "inference_error").inc()
        return _error_body(400, str(e))
    except codec.CodecError as e:
        metrics.failure.labels(*labels, "bad_input").inc()
        return _error_body(400, str(e))
    except Exception as e:
        metrics.failure.labels(*labels, "inference_error").inc()
        return _error_body(500, f"inference failed: {type(e).__name__}: {e}"[:2000])
    metrics.answered(metrics.series(*labels), None if batcher is not None else rows_of(feeds), compute_s,
                     time.perf_counter() - started)
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
        lm = cache.get(row, name) if row["id"] in cache.loaded else await _thread(cache.get, row, name)
        limits = bounds(state, row)
        big = len(body) >= OFF_LOOP_BYTES
        ctype = content_type.split(";")[0].strip().lower()
        if ctype in ("application/x-npz",) or (not ctype.endswith("json") and body[:4] == ZIP_MAGIC):
            feeds = await _maybe_thread(big, lambda: codec.decode_npz(
                body, max_bytes=limits[1], max_members=max(16, 2 * len(lm.inputs))))
        elif ctype in ("application/x-npy",) or (not ctype.endswith("json") and body[:6] == NPY_MAGIC):
            if len(lm.inputs) != 1:
                raise codec.CodecError(f"a .npy body is one array, but this model takes {len(lm.inputs)} inputs "
                                       f"({', '.join(s.name for s in lm.inputs)}): send an .npz")
            feeds = {lm.inputs[0].name: codec.decode_npy(body)}
        else:
            if big:
                check_json_budget(body, limits[1])
            feeds = await _maybe_process(len(body) >= OFF_PROCESS_BYTES, _v1_json, body,
                                         {s.name: (s.dtype, s.shape) for s in lm.inputs})
        check_request(lm, feeds, limits)
        batcher = cache.batcher_for(lm, batching)
        t = time.perf_counter()
        outputs = await cache.predict(lm, feeds, batcher)
        check_output_size(outputs, limits)
        compute_s = time.perf_counter() - t
    except ServingError as e:
        metrics.failure.labels(*labels, e.code).inc()
        return _error(e)
    except codec.CodecError as e:
        metrics.failure.labels(*labels, "bad_input").inc()
        return _error(BadRequest(str(e), code="bad_input"))
    except Exception as e:
        metrics.failure.labels(*labels, "inference_error").inc()
        return _error(Unprocessable(f"inference failed: {type(e).__name__}: {e}"[:2000], code="inference_failed"))
    metrics.answered(metrics.series(*labels), None if batcher is not None else rows_of(feeds), compute_s,
                     time.perf_counter() - started)
    if "application/x-npz" in accept:
        return 200, {"content-type": "application/x-npz"}, codec.encode_npz(outputs)
    return 200, {"content-type": "application/json"}, codec.dumps_v1(outputs)


class InferenceFailed(Exception):
    """The runtime raised on the request's inputs."""


def _v1_json(body: bytes, specs) -> dict:
    from app.serving import codec

    try:
        obj = codec.loads(body)
    except ValueError as e:
        raise codec.CodecError(f"the body is not JSON, .npy or .npz: {e}") from None
    return codec.decode_v1_json(obj, specs)


def _error(err: ModelportError) -> tuple[int, dict[str, str], bytes]:
    return err.status_code, {"content-type": "application/json"}, json.dumps(err.to_dict()).encode()

