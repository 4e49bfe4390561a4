"""/v1/models/{id}/conversions, /v1/jobs, /v1/artifacts."""

from __future__ import annotations

import time
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from app import jobs
from app.api.deps import DatabaseDep, ModelDep, SettingsDep, StoreDep
from app.api.schemas import artifact_out, job_out
from app.catalog import repo
from app.errors import NotFound
from app.storage import blob_key
from app.zipstream import stream_zip

router = APIRouter(tags=["conversions"])


class ConversionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str = Field(description="target format, e.g. onnx, openvino, safetensors, torchscript")
    options: dict[str, Any] = Field(default_factory=dict)
    input_specs: dict[str, Any] | None = Field(
        default=None, description='{"x": {"shape": [1, 3, 224, 224], "dtype": "float32", "dynamic": {"0": "batch"}}}')


@router.post("/v1/models/{model_id}/conversions", status_code=202,
             responses={200: {"description": "the same request was made before: its job"}})
async def convert(model: ModelDep, body: ConversionRequest, request: Request, db: DatabaseDep, settings: SettingsDep):
    job, created = await anyio.to_thread.run_sync(
        jobs.create_job, db, request.app.state.dispatcher, settings, model.id, body.target, body.options,
        body.input_specs)
    return JSONResponse(job_out(job), status_code=202 if created else 200, headers={"Location": f"/v1/jobs/{job.id}"})


def _job(db, job_id: str):
    with db.session() as s:
        job = repo.get_job(s, job_id)
        if job is None:
            raise NotFound(f"no job with id '{job_id}'", code="job_not_found", detail={"job_id": job_id})
        return job


@router.get("/v1/jobs/{job_id}")
async def get_job(job_id: str, db: DatabaseDep,
                  wait: Annotated[float, Query(ge=0, le=600, description="long-poll up to N seconds")] = 0):
    deadline = time.monotonic() + wait
    while True:
        job = await anyio.to_thread.run_sync(_job, db, job_id)
        if job.status in repo.TERMINAL or time.monotonic() >= deadline:
            return job_out(job)
        await anyio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))


@router.get("/v1/jobs")
def list_jobs(db: DatabaseDep, model_id: str | None = None, status: str | None = None,
              limit: Annotated[int, Query(ge=1, le=500)] = 50, offset: Annotated[int, Query(ge=0)] = 0):
    with db.session() as s:
        rows, total = repo.list_jobs(s, model_id=model_id, status=status, limit=limit, offset=offset)
        return {"items": [job_out(j) for j in rows], "total": total, "limit": limit, "offset": offset}


@router.post("/v1/jobs/{job_id}/cancel")
def cancel_job(job_id: str, db: DatabaseDep):
    _job(db, job_id)
    return job_out(jobs.cancel_job(db, job_id))


@router.get("/v1/jobs/{job_id}/logs", response_class=PlainTextResponse)
def job_logs(job_id: str, db: DatabaseDep):
    job = _job(db, job_id)
    parts = [f"### step {st.index}: {st.edge} [{st.status}]\n{st.log}" for st in job.steps]
    return PlainTextResponse("\n".join(parts))


def _artifact(db, artifact_id: str):
    with db.session() as s:
        art = repo.get_artifact(s, artifact_id)
        if art is None:
            raise NotFound(f"no artifact with id '{artifact_id}'", code="artifact_not_found",
                           detail={"artifact_id": artifact_id})
        return art


def _presigned(store, art) -> str | None:
    if art.file_count != 1:
        return None
    return store.presigned_url(blob_key(art.files[0].sha256), filename=art.primary_file.rsplit("/", 1)[-1])


@router.get("/v1/artifacts/{artifact_id}")
def get_artifact(artifact_id: str, db: DatabaseDep, store: StoreDep):
    art = _artifact(db, artifact_id)
    return artifact_out(art, _presigned(store, art))


@router.get("/v1/artifacts/{artifact_id}/download")
def download_artifact(artifact_id: str, db: DatabaseDep, store: StoreDep):
    art = _artifact(db, artifact_id)
    if art.file_count == 1:
        f = art.files[0]
        return StreamingResponse(store.iter_chunks(blob_key(f.sha256)), media_type="application/octet-stream",
                                 headers={"Content-Disposition": f'attachment; filename="{f.path.rsplit("/", 1)[-1]}"',
                                          "Content-Length": str(f.size_bytes), "ETag": f'"{f.sha256}"'})
    entries = [(f.path, f.size_bytes, (lambda k=blob_key(f.sha256): store.iter_chunks(k))) for f in art.files]
    return StreamingResponse(stream_zip(entries), media_type="application/zip",
                             headers={"Content-Disposition": f'attachment; filename="artifact-{art.id}.zip"'})


@router.get("/v1/models/{model_id}/artifacts")
def model_artifacts(model: ModelDep, db: DatabaseDep, store: StoreDep):
    with db.session() as s:
        return {"items": [artifact_out(a, _presigned(store, a)) for a in repo.list_artifacts(s, model.id)]}
