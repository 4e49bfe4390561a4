"""Deployments: deploy a validated artifact as a new version of a name, describe, delete.

The service behind ``/v1/deployments`` (the handlers in ``api/deployments`` only parse and shape);
loading goes through the replica's :class:`~app.serving.runtime.ModelCache`."""

from __future__ import annotations

import re
from typing import Any

from app.catalog import repo
from app.catalog.tables import DEFAULT_PROJECT
from app.errors import Conflict, NotFound, Unprocessable
from app.serving.runtime import qualified

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise Unprocessable("name must be 1-128 characters of letters, digits, '.', '_' or '-', starting with a "
                            "letter or digit", code="bad_deployment_name")
    return name


def deploy(db, cache, *, name: str, artifact_id: str | None = None, model_id: str | None = None,
           version: int | None, runtime: dict[str, Any], batching: dict[str, Any], force: bool,
           project: str = DEFAULT_PROJECT) -> dict[str, Any]:
    """Add version ``version`` (or the next) of ``name`` serving ``artifact_id`` — or, given
    ``model_id``, the uploaded file itself (its own reference: nothing to validate) — and load it
    here now. Artifacts only once their validation passed, unless ``force``. A version that fails
    to load is recorded as ``failed`` with the runtime's own words, and the previous version keeps
    serving. Blocking (loads a runner): call it off the event loop."""
    from app.runners import runnable

    check_name(name)
    if (artifact_id is None) == (model_id is None):
        raise Unprocessable("give exactly one of artifact_id (a converted artifact) or model_id (the upload itself)",
                            code="bad_deployment_source")
    with db.session() as s:
        if model_id is not None:
            src = repo.get_model(s, model_id, project)
            if src is None:
                raise NotFound(f"no model with id '{model_id}'", code="model_not_found")
        else:
            src = repo.get_artifact(s, artifact_id, project)
            if src is None:
                raise NotFound(f"no artifact with id '{artifact_id}'", code="artifact_not_found")
        if not runnable(src.format):
            raise Unprocessable(f"{src.format} {'models' if model_id else 'artifacts'} cannot be served (weights only, "
                                "or no runtime)", code="not_servable")
        if artifact_id is not None:
            v = repo.latest_validation(s, src.id)
            if (v is None or v.status != "passed") and not force:
                verdict = "was never validated" if v is None else f"validation {v.status}: {v.reason}"
                raise Conflict(f"artifact {src.id} {verdict}; deploy it anyway with \"force\": true",
                               code="not_validated", detail={"validation": None if v is None else v.status})
        rows = repo.deployment_versions(s, name, project)
        if version is not None and any(d.version == version for d in rows):
            raise Conflict(f"deployment '{name}' already has version {version}", code="version_exists")
        d = repo.add_deployment(s, project_id=project, name=name,
                                version=version or (max((d.version for d in rows), default=0) + 1),
                                artifact_id=artifact_id, model_id=model_id, status="loading", runtime=runtime,
                                batching=batching, forced=force)
        dep_id = d.id
    try:
        lm = cache.load(dep_id)
        status, reason, load_ms = "ready", None, lm.load_ms
    except Exception as e:  # the runtime's own words: a version that fails to load says why
        status, reason, load_ms = "failed", f"{type(e).__name__}: {e}"[:2000], None
    with db.session() as s:
        repo.set_deployment_status(s, dep_id, status, reason, load_ms)
    cache.invalidate(qualified(project, name))
    return describe(db, cache, name, project)


def describe(db, cache, name: str, project: str = DEFAULT_PROJECT) -> dict[str, Any]:
    with db.session() as s:
        rows = repo.deployment_versions(s, name, project)
        if not rows:
            raise NotFound(f"no deployment named '{name}'", code="deployment_not_found")
        return _view(rows, cache, name)


def describe_all(db, cache, project: str = DEFAULT_PROJECT) -> list[dict[str, Any]]:
    with db.session() as s:
        return [_view(repo.deployment_versions(s, n, project), cache, n) for n in repo.list_deployment_names(s, project)]


def delete(db, cache, name: str, project: str = DEFAULT_PROJECT) -> None:
    """Every version of ``name``, and this replica's runners for them (other replicas let go when
    their cache next finds the versions gone)."""
    with db.session() as s:
        ids = repo.delete_deployment(s, name, project)
        if not ids:
            raise NotFound(f"no deployment named '{name}'", code="deployment_not_found")
    cache.unload(ids)
    cache.invalidate(qualified(project, name))


def _view(rows, cache, name: str) -> dict[str, Any]:
    serving = next((d.version for d in rows if d.status == "ready"), None)
    versions = []
    for d in rows:
        lm = cache.loaded.get(d.id)
        versions.append({"version": d.version, "status": d.status, "reason": d.reason, "artifact_id": d.artifact_id,
                         "model_id": d.model_id,
                         "runtime": d.runtime, "batching": d.batching, "forced": d.forced, "load_ms": d.load_ms,
                         "loaded_here": lm is not None, "batching_note": lm.batching_note if lm else None,
                         "created_at": d.created_at.isoformat()})
    return {"name": name, "serving_version": serving, "versions": versions,
            "links": {"predict": f"/v1/deployments/{name}/predict", "v2": f"/v2/models/{name}"}}
