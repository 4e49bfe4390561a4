"""/v1/deployments: deploy validated artifacts, versions, and the v1 predict endpoint."""

from __future__ import annotations

import re
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import DatabaseDep
from app.catalog import repo
from app.catalog.tables import Deployment
from app.errors import Conflict, NotFound, Unprocessable
from app.serving import dataplane

router = APIRouter(tags=["deployments"])
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class RuntimeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    threads: int | None = Field(default=None, ge=1, le=256, description="intra-op threads of this deployment")
    precision: str = Field(default="fp32", pattern="^(fp32|fp16|bf16|int8)$",
                           description="compute precision, pinned (OpenVINO would otherwise pick bf16 here)")


class BatchingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(default=1, ge=1, le=4096)
    max_queue_delay_ms: float = Field(default=0.0, ge=0, le=10_000, description="0: merge what queued up while "
                                      "the previous batch ran (lowest latency here); >0: also wait this long")


class DeployRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    artifact_id: str
    version: int | None = Field(default=None, ge=1)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    force: bool = Field(default=False, description="deploy even though validation did not pass")


def _out(rows: list[Deployment], cache, name: str) -> dict[str, Any]:
    serving = next((d.version for d in rows if d.status == "ready"), None)
    versions = []
    for d in rows:
        lm = cache.loaded.get(d.id)
        versions.append({"version": d.version, "status": d.status, "reason": d.reason, "artifact_id": d.artifact_id,
                         "runtime": d.runtime, "batching": d.batching, "forced": d.forced, "load_ms": d.load_ms,
                         "loaded_here": lm is not None, "batching_note": lm.batching_note if lm else None,
                         "created_at": d.created_at.isoformat()})
    return {"name": name, "serving_version": serving, "versions": versions,
            "links": {"predict": f"/v1/deployments/{name}/predict", "v2": f"/v2/models/{name}"}}


@router.post("/v1/deployments", status_code=201)
async def deploy(body: DeployRequest, request: Request, db: DatabaseDep):
    """Deploy an artifact as a new version of ``name``. Only artifacts whose validation passed,
    unless ``force``. The version is loaded now; if it fails to load, the previous version keeps serving."""
    from app.runners import runnable

    cache = request.app.state.models
    if not NAME.match(body.name):
        raise Unprocessable("name must be 1-128 characters of letters, digits, '.', '_' or '-', starting with a "
                            "letter or digit", code="bad_deployment_name")
    with db.session() as s:
        art = repo.get_artifact(s, body.artifact_id)
        if art is None:
            raise NotFound(f"no artifact with id '{body.artifact_id}'", code="artifact_not_found")
        if not runnable(art.format):
            raise Unprocessable(f"{art.format} artifacts cannot be served (weights only, or no runtime)",
                                code="not_servable")
        v = repo.latest_validation(s, art.id)
        if (v is None or v.status != "passed") and not body.force:
            verdict = "was never validated" if v is None else f"validation {v.status}: {v.reason}"
            raise Conflict(f"artifact {art.id} {verdict}; deploy it anyway with \"force\": true",
                           code="not_validated", detail={"validation": None if v is None else v.status})
        rows = repo.deployment_versions(s, body.name)
        if body.version is not None and any(d.version == body.version for d in rows):
            raise Conflict(f"deployment '{body.name}' already has version {body.version}", code="version_exists")
        version = body.version or (max((d.version for d in rows), default=0) + 1)
        d = Deployment(name=body.name, version=version, artifact_id=art.id, status="loading",
                       runtime=body.runtime.model_dump(), batching=body.batching.model_dump(), forced=body.force)
        s.add(d)
        s.flush()
        dep_id = d.id
    try:
        lm = await anyio.to_thread.run_sync(cache.load, dep_id)
        status, reason, load_ms = "ready", None, lm.load_ms
    except Exception as e:  # the runtime's own words: a version that fails to load says why
        status, reason, load_ms = "failed", f"{type(e).__name__}: {e}"[:2000], None
    with db.session() as s:
        d = repo.get_deployment(s, dep_id)
        d.status, d.reason, d.load_ms = status, reason, load_ms
    cache.invalidate(body.name)
    with db.session() as s:
        return JSONResponse(_out(repo.deployment_versions(s, body.name), cache, body.name), status_code=201)


@router.get("/v1/deployments")
def list_deployments(request: Request, db: DatabaseDep):
    with db.session() as s:
        return {"items": [_out(repo.deployment_versions(s, n), request.app.state.models, n)
                          for n in repo.list_deployment_names(s)]}


@router.get("/v1/deployments/{name}")
def get_deployment(name: str, request: Request, db: DatabaseDep):
    with db.session() as s:
        rows = repo.deployment_versions(s, name)
        if not rows:
            raise NotFound(f"no deployment named '{name}'", code="deployment_not_found")
        return _out(rows, request.app.state.models, name)


@router.delete("/v1/deployments/{name}", status_code=204)
def delete_deployment(name: str, request: Request, db: DatabaseDep):
    with db.session() as s:
        rows = repo.deployment_versions(s, name)
        if not rows:
            raise NotFound(f"no deployment named '{name}'", code="deployment_not_found")
        ids = [d.id for d in rows]
        for d in rows:
            s.delete(d)
    request.app.state.models.unload(ids)
    request.app.state.models.invalidate(name)


@router.post("/v1/deployments/{name}/predict")
async def predict(name: str, request: Request, version: Annotated[str | None, Query()] = None):
    """Inputs as JSON ``{"inputs": {"x": [[...]]}}``, one ``.npy`` (a single-input model) or an ``.npz``
    (several); outputs as JSON, or ``.npz`` with ``Accept: application/x-npz``."""
    status, headers, payload = await dataplane.run_predict(
        request.app.state, name, version, request.headers.get("content-type", ""),
        request.headers.get("accept", ""), await request.body())
    return Response(payload, status_code=status, headers=headers)
