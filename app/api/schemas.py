"""Response shapes."""

from __future__ import annotations

from typing import Any

from app.catalog.tables import Model
from app.limits import renderable


def model_out(m: Model) -> dict[str, Any]:
    return {
        "id": m.id,
        "name": m.name,
        "format": m.format,
        "format_title": (m.inspection or {}).get("format_title"),
        "digest": m.digest,
        "size_bytes": m.size_bytes,
        "file_count": m.file_count,
        "primary_file": m.primary_file,
        "is_directory": m.is_directory,
        "original_filename": m.original_filename,
        "files": [{"path": f.path, "sha256": f.sha256, "size_bytes": f.size_bytes} for f in m.files],
        "metadata": renderable(m.user_metadata),  # stored values render whatever they hold
        "warnings": renderable(m.warnings),
        "inspection": renderable(m.inspection),
        "created_at": m.created_at.isoformat(),
        "links": {"self": f"/v1/models/{m.id}", "download": f"/v1/models/{m.id}/download"},
    }


def step_out(st) -> dict[str, Any]:
    return {
        "id": st.id, "index": st.index, "kind": st.kind, "edge": st.edge, "queue": st.queue, "options": st.options,
        "status": st.status, "attempts": st.attempts, "max_attempts": st.max_attempts, "worker": st.worker,
        "started_at": _iso(st.started_at), "finished_at": _iso(st.finished_at), "seconds": st.seconds,
        "output_artifact_id": st.output_artifact_id, "error": st.error,
    }


def job_out(j) -> dict[str, Any]:
    current = next((st for st in j.steps if st.status not in ("succeeded",)), None)
    return {
        "id": j.id, "model_id": j.model_id, "target": j.target, "options": j.options, "input_specs": j.input_specs,
        "status": j.status, "plan": j.plan, "current_step": current.index if current else None,
        "steps": [step_out(st) for st in j.steps],
        "artifact_ids": [st.output_artifact_id for st in j.steps if st.output_artifact_id],
        "artifact_id": next((st.output_artifact_id for st in reversed(j.steps) if st.output_artifact_id), None)
        if j.status == "succeeded" else None,
        "error": j.error, "cancel_requested": j.cancel_requested,
        "callbacks": [cb["url"] for cb in j.callbacks or []],
        "created_at": _iso(j.created_at), "started_at": _iso(j.started_at), "finished_at": _iso(j.finished_at),
        "links": {"self": f"/v1/jobs/{j.id}", "logs": f"/v1/jobs/{j.id}/logs"},
    }


def validation_out(v) -> dict[str, Any] | None:
    if v is None:
        return None
    return {"id": v.id, "status": v.status, "reason": v.reason, "profile": v.profile, "reference": v.reference,
            "max_abs_err": renderable(v.max_abs_err), "worst_output": v.worst_output, "report": renderable(v.report),
            "created_at": _iso(v.created_at)}


def benchmark_out(b) -> dict[str, Any] | None:
    if b is None:
        return None
    return {"id": b.id, "status": b.status, "reason": b.reason, "settings": b.settings, "load_ms": b.load_ms,
            "p50_ms": b.p50_ms, "p99_ms": b.p99_ms, "throughput": b.throughput, "host": b.host,
            "results": renderable(b.results), "object_key": b.object_key, "created_at": _iso(b.created_at)}


def artifact_out(a, download_url: str | None = None, validation=None, benchmark=None) -> dict[str, Any]:
    return {
        "id": a.id, "model_id": a.model_id, "format": a.format, "digest": a.digest, "primary_file": a.primary_file,
        "size_bytes": a.size_bytes, "file_count": a.file_count,
        "files": [{"path": f.path, "sha256": f.sha256, "size_bytes": f.size_bytes} for f in a.files],
        "lineage": {"model_id": a.model_id, "parent_artifact_id": a.parent_artifact_id, "job_id": a.job_id,
                    "step_id": a.step_id, "edge": a.edge, "options": a.options, "toolchain": a.toolchain,
                    "host": a.host},
        "inspection": renderable(a.inspection), "warnings": renderable(a.warnings), "created_at": _iso(a.created_at),
        "download_url": download_url,
        "validation": validation_out(validation), "benchmark": benchmark_out(benchmark),
        "deployable": validation is not None and validation.status == "passed",
        "links": {"self": f"/v1/artifacts/{a.id}", "download": f"/v1/artifacts/{a.id}/download"},
    }


def _iso(v) -> str | None:
    return v.isoformat() if v is not None else None



# ------------------------------------------------------------------ documented errors (OpenAPI)

from pydantic import BaseModel  # noqa: E402


class ErrorDetail(BaseModel):
    code: str
    message: str
    detail: dict[str, Any] = {}


class ErrorBody(BaseModel):
    """Every v1 error: ``{"error": {"code", "message", "detail"}}``."""

    error: ErrorDetail


class V2ErrorBody(BaseModel):
    """KServe v2 errors are ``{"error": "..."}``; a refused key answers in the v1 shape there too."""

    error: str | ErrorDetail


ERRORS: dict[int | str, dict[str, Any]] = {"default": {"model": ErrorBody, "description": "an error (4xx, 5xx)"}}
V2_ERRORS: dict[int | str, dict[str, Any]] = {"default": {"model": V2ErrorBody, "description": "an error (4xx, 5xx)"}}
BYTES = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
         "application/zip": {"schema": {"type": "string", "format": "binary"}}}

PREDICT_DOC: dict[str, Any] = {
    "requestBody": {"required": True, "content": {
        "application/json": {"schema": {"type": "object", "required": ["inputs"], "properties": {
            "inputs": {"type": "object", "additionalProperties": {}}}}},
        "application/x-npy": {"schema": {"type": "string", "format": "binary"}},
        "application/x-npz": {"schema": {"type": "string", "format": "binary"}}}},
    "responses": {"200": {"description": "the outputs", "content": {
        "application/json": {"schema": {"type": "object", "properties": {"outputs": {"type": "object"}}}},
        "application/x-npz": {"schema": {"type": "string", "format": "binary"}}}}}}
_V2_TENSOR = {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
    "name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}},
    "datatype": {"type": "string"}, "parameters": {"type": "object"}, "data": {}}}
INFER_DOC: dict[str, Any] = {
    "requestBody": {"required": True, "content": {
        "application/json": {"schema": {"type": "object", "required": ["inputs"], "properties": {
            "id": {"type": "string"}, "parameters": {"type": "object"},
            "inputs": {"type": "array", "items": _V2_TENSOR},
            "outputs": {"type": "array", "items": {"type": "object"}}}}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
    "responses": {"200": {"description": "the outputs (JSON, or JSON then binary tensors)", "content": {
        "application/json": {"schema": {"type": "object"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}}
UPLOAD_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["files"], "properties": {
        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
        "name": {"type": "string"}, "metadata": {"type": "string", "description": "a JSON object"}}}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}
NPZ_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}
