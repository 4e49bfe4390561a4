"""/v1/deployments: deploy validated artifacts, versions, and the v1 predict endpoint."""

from __future__ import annotations

from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import DatabaseDep, PrincipalDep, StoreDep
from app.api.schemas import PREDICT_DOC
from app.api.zipstream import stream_zip
from app.limits import content_disposition
from app.serving import dataplane, deployments, endpoint_bench, export
from app.serving.runtime import qualified

router = APIRouter(tags=["deployments"])


class RuntimeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    threads: int | None = Field(default=None, ge=1, le=256, description="intra-op threads of this deployment")
    precision: str = Field(default="fp32", pattern="^(fp32|fp16|bf16|int8)$",
                           description="compute precision, pinned (OpenVINO would otherwise pick bf16 here)")
    max_rows: int | None = Field(default=None, ge=1, le=1 << 20, description="rows of one request, at most "
                                 "(default and ceiling: MODELPORT_SERVING_MAX_ROWS); more get 413 before running")
    max_output_mb: float | None = Field(default=None, gt=0, le=1 << 20, description="estimated outputs of one "
                                        "request, at most (default and ceiling: MODELPORT_SERVING_MAX_OUTPUT_BYTES)")


class BatchingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(default=1, ge=1, le=4096)
    max_queue_delay_ms: float = Field(default=0.0, ge=0, le=10_000, description="0: merge what queued up while "
                                      "the previous batch ran (lowest latency here); >0: also wait this long")


class DeployRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    artifact_id: str | None = Field(default=None, description="a converted artifact (its validation must have passed)")
    model_id: str | None = Field(default=None, description="or the uploaded model itself, when a runner exists for "
                                                           "its format (it is its own reference: no validation)")
    version: int | None = Field(default=None, ge=1, le=2**31 - 1)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    force: bool = Field(default=False, description="deploy even though validation did not pass")


@router.post("/v1/deployments", status_code=201)
async def deploy(body: DeployRequest, request: Request, db: DatabaseDep, principal: PrincipalDep):
    """Deploy an artifact as a new version of ``name``. Only artifacts whose validation passed,
    unless ``force``. The version is loaded now; if it fails to load, the previous version keeps serving."""
    out = await anyio.to_thread.run_sync(lambda: deployments.deploy(
        db, request.app.state.models, name=body.name, artifact_id=body.artifact_id, model_id=body.model_id,
        version=body.version, runtime=body.runtime.model_dump(), batching=body.batching.model_dump(),
        force=body.force, project=principal.project))
    return JSONResponse(out, status_code=201)


@router.get("/v1/deployments")
def list_deployments(request: Request, db: DatabaseDep, principal: PrincipalDep):
    return {"items": deployments.describe_all(db, request.app.state.models, principal.project)}


@router.get("/v1/deployments/{name}")
def get_deployment(name: str, request: Request, db: DatabaseDep, principal: PrincipalDep):
    return deployments.describe(db, request.app.state.models, name, principal.project)


@router.delete("/v1/deployments/{name}", status_code=204)
def delete_deployment(name: str, request: Request, db: DatabaseDep, principal: PrincipalDep):
    deployments.delete(db, request.app.state.models, name, principal.project)


@router.get("/v1/deployments/{name}/export")
def export_deployment(name: str, db: DatabaseDep, store: StoreDep, principal: PrincipalDep,
                      format: Annotated[Literal["triton", "kserve"], Query()],
                      version: Annotated[int | None, Query(ge=1)] = None,
                      model_name: Annotated[str | None, Query(description="the Triton model's name (default: "
                                                                          "the deployment's)")] = None):
    """``triton``: a zip of a Triton model repository (``<model>/config.pbtxt``, ``<model>/<version>/model.*``);
    ``kserve``: an InferenceService (JSON) whose storageUri is that repository, written into the S3 store."""
    out = export.export(db, store, name, principal.project, format=format, version=version, model_name=model_name)
    if out.manifest is not None:
        return JSONResponse(out.manifest, headers=out.headers)
    return StreamingResponse(stream_zip(out.entries), media_type="application/zip",
                             headers={**out.headers, "Content-Disposition": content_disposition(out.filename)})


@router.post("/v1/deployments/{name}/predict", openapi_extra=PREDICT_DOC)
async def predict(name: str, request: Request, principal: PrincipalDep,
                  version: Annotated[str | None, Query()] = None):
    """Inputs as JSON ``{"inputs": {"x": [[...]]}}``, one ``.npy`` (a single-input model) or an ``.npz``
    (several); outputs as JSON, or ``.npz`` with ``Accept: application/x-npz``."""
    status, headers, payload = await dataplane.run_predict(
        request.app.state, qualified(principal.project, name), version, request.headers.get("content-type", ""),
        request.headers.get("accept", ""), await request.body(), request.headers.get("x-modelport-batching"))
    return Response(payload, status_code=status, headers=headers)


class EndpointBenchmarkRequest(BaseModel):
    """A perf_analyzer-style sweep through the deployment's endpoint (app/serving/endpoint_bench.py)."""

    model_config = ConfigDict(extra="forbid")

    version: int | None = Field(default=None, ge=1, description="the version to measure (default: the one serving)")
    modes: list[Literal["batched", "unbatched"]] = Field(default=["batched", "unbatched"], min_length=1,
                                                         description="with and/or without dynamic batching")
    protocol: Literal["v2_binary", "v2_json"] = Field(default="v2_binary", description="binary tensors (what "
                                                      "tritonclient sends) or v2 JSON")
    rows: int = Field(default=1, ge=1, le=4096, description="rows (samples) per request")
    max_concurrency: int = Field(default=64, ge=1, le=1024, description="concurrency doubles from 1 up to this")
    growth_pct: float = Field(default=5.0, ge=0, le=100, description="stop once throughput grows by less than this")
    stability_pct: float = Field(default=10.0, gt=0, le=100, description="3 windows agree within this")
    window_ms: float = Field(default=1000.0, ge=50, le=60_000, description="one measurement window")
    min_window_requests: int = Field(default=25, ge=1, le=100_000, description="a window lasts until it holds "
                                     "this many answers (up to 10 windows' time)")
    max_windows: int = Field(default=10, ge=3, le=100, description="per concurrency, then reported unstable")
    max_seconds: float = Field(default=300.0, gt=0, le=3600, description="the whole sweep, split between modes")
    max_batch_size: int = Field(default=16, ge=2, le=4096, description="the batched mode of a deployment deployed "
                                "without batching; one with batching is measured as deployed")
    max_queue_delay_ms: float = Field(default=0.0, ge=0, le=10_000)


@router.post("/v1/deployments/{name}/benchmark", status_code=202)
async def benchmark_deployment(name: str, body: EndpointBenchmarkRequest, request: Request, principal: PrincipalDep):
    """Start a concurrency sweep against the deployment's own endpoint, with and without dynamic
    batching; poll ``links.self`` (``?wait=S``) for the latency and throughput per concurrency."""
    out = await endpoint_bench.start(request.app.state, qualified(principal.project, name), body.model_dump(),
                                     request.scope.get("server"), endpoint_bench.credentials(request.headers))
    return JSONResponse(out, status_code=202)


@router.get("/v1/deployments/{name}/benchmark/{bench_id}")
async def get_deployment_benchmark(name: str, bench_id: str, request: Request, principal: PrincipalDep,
                                   wait: Annotated[float, Query(ge=0, le=600, description="long-poll up to N s")] = 0):
    return await endpoint_bench.get(request.app.state, qualified(principal.project, name), bench_id, wait)
