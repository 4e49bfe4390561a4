"""/v1/models: upload, list, get, download, delete."""

from __future__ import annotations

import shutil
from typing import Annotated

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from app.api import upload_stream
from app.api.deps import DatabaseDep, ModelDep, PrincipalDep, SettingsDep, StoreDep
from app.api.schemas import BYTES, UPLOAD_BODY, model_out
from app.api.zipstream import stream_zip
from app.catalog import repo
from app.errors import NotFound
from app.ingest import uploads
from app.limits import content_disposition
from app.storage import blob_key

router = APIRouter(prefix="/v1/models", tags=["models"])

UPLOAD_DOC = """Upload a model.

Send **multipart/form-data** with one or more file parts (several for formats made of several files:
OpenVINO `.xml` + `.bin`, ONNX + external data) and optional `name` and `metadata` (a JSON object)
fields, or send the **raw file** as the body (`application/octet-stream`, `application/zip`, …) with
`?filename=`. Directory formats (TensorFlow SavedModel, Core ML `.mlpackage`) come as `.zip`,
`.tar` or `.tar.gz`. The same content uploaded again returns the existing model with 200."""


@router.post("", status_code=201, description=UPLOAD_DOC, openapi_extra=UPLOAD_BODY,
             responses={200: {"description": "the same content was already uploaded"},
                        201: {"description": "created"}})
async def upload_model(
    request: Request,
    settings: SettingsDep,
    db: DatabaseDep,
    store: StoreDep,
    principal: PrincipalDep,
    filename: Annotated[str | None, Query(description="file name for a raw-body upload")] = None,
    name: Annotated[str | None, Query(max_length=255)] = None,
    metadata: Annotated[str | None, Query(description="JSON object")] = None,
):
    up = await upload_stream.receive(request, settings, filename=filename, name=name, metadata=metadata)
    try:
        model, created = await anyio.to_thread.run_sync(uploads.ingest, up, settings, db, store, principal.project)
    finally:
        await anyio.to_thread.run_sync(shutil.rmtree, up.workdir, True)
    return JSONResponse(model_out(model), status_code=201 if created else 200,
                        headers={"Location": f"/v1/models/{model.id}"})


@router.get("")
def list_models(
    db: DatabaseDep,
    principal: PrincipalDep,
    format: str | None = None,
    name: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
):
    with db.session() as s:
        rows, total = repo.list_models(s, project=principal.project, format=format, name=name, limit=limit,
                                       offset=offset)
        return {"items": [model_out(m) for m in rows], "total": total, "limit": limit, "offset": offset}


@router.get("/{model_id}")
def get_model(model: ModelDep):
    return model_out(model)


@router.get("/{model_id}/download", responses={200: {"content": BYTES, "description": "the file, or a zip of them"}})
def download_model(model: ModelDep, store: StoreDep, file: str | None = None):
    """The model's bytes: the file itself for a single-file model, a zip of its files otherwise
    (``?file=path`` picks one file)."""
    chosen = _chosen(model, file)
    if len(chosen) == 1 and not (model.is_directory and file is None):
        f = chosen[0]
        fname = f.path.rsplit("/", 1)[-1]
        return StreamingResponse(
            store.iter_chunks(blob_key(f.sha256)), media_type="application/octet-stream",
            headers={"Content-Disposition": content_disposition(fname), "Content-Length": str(f.size_bytes),
                     "ETag": f'"{f.sha256}"'})
    entries = [(f.path, f.size_bytes, (lambda k=blob_key(f.sha256): store.iter_chunks(k))) for f in chosen]
    return StreamingResponse(
        stream_zip(entries), media_type="application/zip",
        headers={"Content-Disposition": content_disposition(f"{model.name}.zip")})


def _chosen(model, file: str | None) -> list:
    files = {f.path: f for f in model.files}
    if file is None:
        return list(files.values())
    if file not in files:
        raise NotFound(f"model '{model.id}' has no file '{file}'", code="file_not_found",
                       detail={"files": sorted(files)})
    return [files[file]]


@router.delete("/{model_id}", status_code=204)
def delete_model(model_id: str, db: DatabaseDep, store: StoreDep, principal: PrincipalDep):
    uploads.delete(db, store, model_id, principal.project)
