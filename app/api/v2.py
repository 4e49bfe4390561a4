"""KServe v2 / Open Inference Protocol, as Triton speaks it: health, server and model metadata,
readiness, and infer with JSON tensors and the binary tensor extension. ``tritonclient.http`` works
unchanged. Errors are ``{"error": "..."}``. Requests without a Content-Type are accepted."""

from __future__ import annotations

import logging

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from app import __version__
from app.api.deps import PrincipalDep
from app.api.schemas import INFER_DOC
from app.auth import Principal
from app.serving import dataplane
from app.serving.runtime import ServingError, qualified

router = APIRouter(prefix="/v2", tags=["kserve-v2"])
health_router = APIRouter(prefix="/v2", tags=["kserve-v2"])  # liveness and readiness: no key needed
log = logging.getLogger("modelport.serving")


def _err(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


@router.get("")
def server_metadata():
    return {"name": "modelport", "version": __version__, "extensions": ["binary_tensor_data"]}


@health_router.get("/health/live", response_class=Response)
def live():
    return Response(status_code=200)


@health_router.get("/health/ready", response_class=Response)
def ready(request: Request):
    try:
        from app.catalog.db import ping

        ping(request.app.state.db.engine)
    except Exception as e:
        return _err(503, f"catalog unreachable: {e}")
    return Response(status_code=200)


async def _loaded(request: Request, name: str, version: str | None):
    return await dataplane.loaded(request.app.state, name, version)


def _tensor_meta(specs) -> list[dict]:
    from app.serving.codec import datatype_of

    return [{"name": s.name, "datatype": datatype_of(s.dtype) if s.dtype else "FP32",
             "shape": [d if isinstance(d, int) else -1 for d in (s.shape or [])]} for s in specs]


async def _metadata(request: Request, principal: Principal, shown: str, version: str | None):
    name = qualified(principal.project, shown)
    try:
        row, lm = await _loaded(request, name, version)
    except ServingError as e:
        return _err(e.status, e.message)
    except Exception as e:
        return _err(500, f"failed to load '{shown}': {type(e).__name__}: {e}")
    try:
        rows = await anyio.to_thread.run_sync(request.app.state.models.versions, name)
    except Exception as e:  # the catalog is down: the versions aresolve just used
        log.warning("listing versions of %s failed: %s", name, e)
        rows = [row]
    versions = [str(r["version"]) for r in rows if r["status"] == "ready"]
    try:
        inputs, outputs = _tensor_meta(lm.inputs), _tensor_meta(lm.outputs)
    except ValueError as e:  # a dtype the v2 protocol cannot carry
        return _err(400, f"model '{shown}' cannot be described in the v2 protocol: {e}")
    return {"name": shown, "versions": versions, "platform": f"modelport_{lm.format}", "inputs": inputs,
            "outputs": outputs}


@router.get("/models/{name}")
async def model_metadata(name: str, request: Request, principal: PrincipalDep):
    return await _metadata(request, principal, name, None)


@router.get("/models/{name}/versions/{version}")
async def model_version_metadata(name: str, version: str, request: Request, principal: PrincipalDep):
    return await _metadata(request, principal, name, version)


def _ready(request: Request, name: str, version: str | None) -> Response:
    try:
        request.app.state.models.resolve(name, version)
    except ServingError as e:
        return _err(404 if e.status == 404 else 400, e.message)
    except Exception as e:  # the catalog is unreachable
        return _err(503, f"the catalog is unreachable: {type(e).__name__}: {e}"[:1000])
    return Response(status_code=200)


@router.get("/models/{name}/ready", response_class=Response)
def model_ready(name: str, request: Request, principal: PrincipalDep):
    return _ready(request, qualified(principal.project, name), None)


@router.get("/models/{name}/versions/{version}/ready", response_class=Response)
def model_version_ready(name: str, version: str, request: Request, principal: PrincipalDep):
    return _ready(request, qualified(principal.project, name), version)


async def _infer(request: Request, name: str, version: str | None) -> Response:
    status, headers, payload = await dataplane.run_infer(request.app.state, name, version,
                                           request.headers.get("inference-header-content-length"),
                                           await request.body(), request.headers.get("x-modelport-batching"))
    return Response(payload, status_code=status, headers=headers)


@router.post("/models/{name}/infer", openapi_extra=INFER_DOC)
async def infer(name: str, request: Request, principal: PrincipalDep):
    return await _infer(request, qualified(principal.project, name), None)


@router.post("/models/{name}/versions/{version}/infer", openapi_extra=INFER_DOC)
async def infer_version(name: str, version: str, request: Request, principal: PrincipalDep):
    return await _infer(request, qualified(principal.project, name), version)
