"""/v1/models/{id}/conversions, /v1/jobs, /v1/artifacts."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import ArtifactDep, DatabaseDep, ModelDep, PrincipalDep, SettingsDep, StoreDep
from app.api.schemas import BYTES, NPZ_BODY, artifact_out, benchmark_out, job_out, validation_out
from app.api.zipstream import stream_zip
from app.catalog import repo
from app.errors import NotFound
from app.limits import content_disposition
from app.pipeline import jobs
from app.storage import blob_key

router = APIRouter(tags=["conversions"])


class ConversionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str = Field(description="target format, e.g. onnx, openvino, safetensors, torchscript")
    options: dict[str, Any] = Field(default_factory=dict)
    input_specs: dict[str, Any] | None = Field(
        default=None, description='{"x": {"shape": [1, 3, 224, 224], "dtype": "float32", "dynamic": {"0": "batch"}}}')
    validate_: bool = Field(default=True, alias="validate",
                            description="prove each artifact against the model (a step after each conversion)")
    benchmark: bool | dict[str, Any] = Field(
        default=True, description='measure each artifact on its hardware; true, false or '
        '{"batch_sizes": [1, 8], "threads": 2, "max_seconds": 30, "precision": "fp32"}')
    tolerance: dict[str, Any] | None = Field(
        default=None, description='overrides of the validation profile: {"atol": .., "rtol": .., '
        '"outputs": {"name": {...}}}')
    hardware: Literal["cpu", "intel", "gpu", "apple"] | None = Field(
        default=None, description="validate and benchmark each artifact on this hardware where its format has a "
        "runtime for it (gpu: ONNX on ONNX Runtime's CUDA provider, .pt2/TorchScript on torch CUDA; TensorRT "
        "engines are on gpu anyway); default: each format's own runtime")
    callback_url: str | None = Field(default=None, description="POSTed (signed) when the job ends")
    callback_secret: str | None = Field(default=None, description="16+ characters: the HMAC-SHA256 key of "
                                        "X-Modelport-Signature on the callback")


@router.post("/v1/models/{model_id}/conversions", status_code=202,
             responses={200: {"description": "the same request was made before: its job"}})
async def convert(model: ModelDep, body: ConversionRequest, request: Request, db: DatabaseDep, settings: SettingsDep):
    from app.pipeline import callbacks

    callback = callbacks.check(body.callback_url, body.callback_secret)
    job, created = await anyio.to_thread.run_sync(
        lambda: jobs.create_job(db, request.app.state.dispatcher, settings, model.id, body.target, body.options,
                                body.input_specs, validate=body.validate_, benchmark=body.benchmark,
                                tolerance=body.tolerance, callback=callback, hardware=body.hardware))
    return JSONResponse(job_out(job), status_code=202 if created else 200, headers={"Location": f"/v1/jobs/{job.id}"})


def _job(db, job_id: str, project: str):
    with db.session() as s:
        job = repo.get_job(s, job_id, project)
        if job is None:
            raise NotFound(f"no job with id '{job_id}'", code="job_not_found", detail={"job_id": job_id})
        return job


@router.get("/v1/jobs/{job_id}")
async def get_job(job_id: str, db: DatabaseDep, principal: PrincipalDep,
                  wait: Annotated[float, Query(ge=0, le=600, description="long-poll up to N seconds")] = 0):
    deadline = time.monotonic() + wait
    while True:
        job = await anyio.to_thread.run_sync(_job, db, job_id, principal.project)
        if job.status in repo.TERMINAL or time.monotonic() >= deadline:
            return job_out(job)
        await anyio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))


@router.get("/v1/jobs")
def list_jobs(db: DatabaseDep, principal: PrincipalDep, model_id: str | None = None, status: str | None = None,
              limit: Annotated[int, Query(ge=1, le=500)] = 50,
              offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0):
    with db.session() as s:
        rows, total = repo.list_jobs(s, project=principal.project, model_id=model_id, status=status, limit=limit,
                                     offset=offset)
        return {"items": [job_out(j) for j in rows], "total": total, "limit": limit, "offset": offset}


@router.post("/v1/jobs/{job_id}/cancel")
def cancel_job(job_id: str, db: DatabaseDep, principal: PrincipalDep):
    _job(db, job_id, principal.project)
    return job_out(jobs.cancel_job(db, job_id))


@router.get("/v1/jobs/{job_id}/callbacks")
def job_callbacks(job_id: str, db: DatabaseDep, principal: PrincipalDep):
    """Each signed POST of this job's end: status, attempts, the last error."""
    from app.pipeline import callbacks

    _job(db, job_id, principal.project)
    with db.session() as s:
        return {"items": [callbacks.view(d) for d in repo.deliveries_of(s, job_id)]}


@router.get("/v1/jobs/{job_id}/logs", responses={200: {"content": {"text/plain": {}}, "description": "the log"}})
def job_logs(job_id: str, db: DatabaseDep, principal: PrincipalDep):
    job = _job(db, job_id, principal.project)
    parts = [f"### step {st.index}: {st.edge} [{st.status}]\n{st.log}" for st in job.steps]
    return PlainTextResponse("\n".join(parts))


def _presigned(store, art) -> str | None:
    if art.file_count != 1:
        return None
    return store.presigned_url(blob_key(art.files[0].sha256), filename=art.primary_file.rsplit("/", 1)[-1])


def _checks(db, artifact_ids: list[str]) -> dict[str, dict[str, Any]]:
    with db.session() as s:
        return {a: {"validation": repo.latest_validation(s, a), "benchmark": repo.latest_benchmark(s, a)}
                for a in artifact_ids}


@router.get("/v1/artifacts/{artifact_id}")
def get_artifact(art: ArtifactDep, db: DatabaseDep, store: StoreDep):
    return artifact_out(art, _presigned(store, art), **_checks(db, [art.id])[art.id])


@router.get("/v1/artifacts/{artifact_id}/validations")
def list_validations(artifact_id: str, art: ArtifactDep, db: DatabaseDep):
    with db.session() as s:
        return {"items": [validation_out(v) for v in repo.validations_of(s, artifact_id)]}


class BenchmarkRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_sizes: list[Annotated[int, Field(ge=1, le=4096)]] = Field(default=[1, 8], min_length=1, max_length=16)
    threads: int | None = Field(default=None, ge=1, le=1024)
    max_seconds: float = Field(default=30, gt=0, le=3600)
    precision: str = Field(default="fp32", pattern="^(fp32|fp16|bf16|int8)$")
    hardware: Literal["cpu", "intel", "gpu", "apple"] | None = Field(
        default=None, description="measure on this hardware's runtime for the format (gpu: CUDA), where it has one")


@router.post("/v1/artifacts/{artifact_id}/benchmarks", status_code=202)
async def run_benchmark(artifact_id: str, art: ArtifactDep, body: BenchmarkRequest, request: Request,
                        db: DatabaseDep, settings: SettingsDep):
    job, created = await anyio.to_thread.run_sync(
        lambda: jobs.create_benchmark_job(db, request.app.state.dispatcher, settings, artifact_id,
                                          body.model_dump()))
    return JSONResponse(job_out(job), status_code=202 if created else 200, headers={"Location": f"/v1/jobs/{job.id}"})


class RebuildRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    validate_: bool = Field(default=True, alias="validate")
    benchmark: bool | dict[str, Any] = True


@router.post("/v1/artifacts/{artifact_id}/rebuild", status_code=202,
             responses={200: {"description": "a rebuild of this artifact is already under way: its job"}})
async def rebuild_artifact(artifact_id: str, art: ArtifactDep, request: Request, db: DatabaseDep,
                           settings: SettingsDep, body: RebuildRequest | None = None):
    """The same conversion again (edge, options, input), on its edge's queue: a TensorRT engine for
    the GPU of the gpu worker that takes it."""
    body = body or RebuildRequest()
    job, created = await anyio.to_thread.run_sync(
        lambda: jobs.create_rebuild_job(db, request.app.state.dispatcher, settings, artifact_id,
                                        validate=body.validate_, benchmark=body.benchmark))
    return JSONResponse(job_out(job), status_code=202 if created else 200, headers={"Location": f"/v1/jobs/{job.id}"})


@router.get("/v1/artifacts/{artifact_id}/benchmarks")
def list_benchmarks(artifact_id: str, art: ArtifactDep, db: DatabaseDep):
    with db.session() as s:
        return {"items": [benchmark_out(b) for b in repo.benchmarks_of(s, artifact_id)]}


@router.get("/v1/artifacts/{artifact_id}/download", responses={200: {"content": BYTES, "description": "the file, or a zip"}})
def download_artifact(art: ArtifactDep, store: StoreDep):
    if art.file_count == 1:
        f = art.files[0]
        return StreamingResponse(store.iter_chunks(blob_key(f.sha256)), media_type="application/octet-stream",
                                 headers={"Content-Disposition": content_disposition(f.path),
                                          "Content-Length": str(f.size_bytes), "ETag": f'"{f.sha256}"'})
    entries = [(f.path, f.size_bytes, (lambda k=blob_key(f.sha256): store.iter_chunks(k))) for f in art.files]
    return StreamingResponse(stream_zip(entries), media_type="application/zip",
                             headers={"Content-Disposition": content_disposition(f"artifact-{art.id}.zip")})


@router.get("/v1/models/{model_id}/artifacts")
def model_artifacts(model: ModelDep, db: DatabaseDep, store: StoreDep):
    with db.session() as s:
        arts = repo.list_artifacts(s, model.id)
    checks = _checks(db, [a.id for a in arts])
    return {"items": [artifact_out(a, _presigned(store, a), **checks[a.id]) for a in arts]}


@router.get("/v1/models/{model_id}/report", responses={200: {"content": {"text/markdown": {}}}})
def model_report(model: ModelDep, db: DatabaseDep, format: Annotated[str, Query(pattern="^(json|md)$")] = "json"):
    """One row per artifact (size, load, latency, throughput, validation, whether it is on the Pareto
    front of size and latency: ``pareto``) and a recommendation per
    priority of the seed's "By Priority" table, each naming the measured numbers behind it."""
    from app.pipeline import report

    with db.session() as s:
        body = report.build(s, repo.get_model(s, model.id))
    if format == "md":
        return PlainTextResponse(report.markdown(body), media_type="text/markdown")
    return body


class ReportAllRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_specs: dict[str, Any] | None = None
    benchmark: bool | dict[str, Any] = True
    tolerance: dict[str, Any] | None = None


@router.post("/v1/models/{model_id}/report-all", status_code=202)
async def report_all(model: ModelDep, request: Request, db: DatabaseDep, settings: SettingsDep,
                     body: ReportAllRequest | None = None):
    """Convert to every reachable target (and the precision variants), validate and benchmark
    each: one upload -> every format, proven and measured. Poll the jobs, then GET the report."""
    from app.pipeline import report

    body = body or ReportAllRequest()
    made, skipped = await anyio.to_thread.run_sync(lambda: report.request_all(
        db, request.app.state.dispatcher, settings, model.id, input_specs=body.input_specs,
        benchmark=body.benchmark, tolerance=body.tolerance))
    return JSONResponse({"model_id": model.id, "jobs": [job_out(j) for j in made], "skipped": skipped,
                         "report": f"/v1/models/{model.id}/report"}, status_code=202)


@router.put("/v1/models/{model_id}/samples", status_code=200, openapi_extra=NPZ_BODY)
async def upload_samples(model: ModelDep, request: Request, db: DatabaseDep, store: StoreDep,
                         settings: SettingsDep):
    """Sample inputs for validation: an .npz (no pickles) with one array per model input.
    Reused by every later validation of this model's artifacts."""
    from app.api.upload_stream import spool
    from app.ingest import samples

    path, sha = await spool(request, settings, limit=samples.MAX_BYTES, what="sample inputs", suffix=".npz")
    try:
        return await anyio.to_thread.run_sync(samples.attach, db, store, model.id, path, sha, model.inspection)
    finally:
        path.unlink(missing_ok=True)


@router.post("/v1/models/{model_id}/calibration-sets", status_code=201, openapi_extra=NPZ_BODY)
async def upload_calibration_set(model: ModelDep, request: Request, db: DatabaseDep, store: StoreDep,
                                 settings: SettingsDep):
    """A calibration set for static INT8: an .npz (no pickles) with, for every model input, an array whose first
    axis holds the calibration rows (checked like samples: members, sizes, shapes, dtypes). Convert with
    ``{"precision": "int8", "calibration": "upload:<id>"}`` (ONNX static QDQ, OpenVINO nncf.quantize, TFLite
    full-integer, TensorRT INT8); the model's samples stay what validation compares on."""
    from app.api.upload_stream import spool
    from app.ingest import samples

    path, sha = await spool(request, settings, limit=samples.MAX_BYTES, what="calibration sets", suffix=".npz")
    try:
        return await anyio.to_thread.run_sync(samples.attach_calibration, db, store, model.id, path, sha,
                                              model.inspection)
    finally:
        path.unlink(missing_ok=True)


@router.get("/v1/models/{model_id}/calibration-sets")
def list_calibration_sets(model: ModelDep, db: DatabaseDep):
    from app.ingest import samples

    with db.session() as s:
        return {"items": [samples.calibration_out(c) for c in repo.calibration_sets(s, model.id)]}


@router.get("/v1/models/{model_id}/example-inputs")
async def example_inputs(model: ModelDep, store: StoreDep, settings: SettingsDep):
    """Inputs to try a prediction with, as the JSON ``POST /v1/deployments/{name}/predict`` takes:
    the model's uploaded samples (``"source": "samples"``; their first row when the batch is free),
    else one batch of generated values for its inspected inputs (``"source": "generated"``)."""
    from app.pipeline import examples

    return await anyio.to_thread.run_sync(examples.example_inputs, store, settings, model)
