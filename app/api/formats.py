"""/v1/formats: what modelport knows and what this host can read and run."""

from __future__ import annotations

import importlib.util

from fastapi import APIRouter, Request

from app.conversion import planner, registry
from app.formats import all_formats

router = APIRouter(prefix="/v1/formats", tags=["formats"])


def _available(module: str | None) -> bool:
    return module is None or importlib.util.find_spec(module) is not None


def _live(request: Request | None) -> set[str] | None:
    if request is None:
        return None
    from app.pipeline.jobs import live_queues

    with request.app.state.db.session() as s:
        return live_queues(s, request.app.state.settings)


@router.get("")
def list_formats(request: Request = None):  # type: ignore[assignment]  # None when called from the CLI
    live = _live(request)
    out = []
    for f in all_formats():
        out.append({
            "name": f.name,
            "title": f.title,
            "extensions": list(f.extensions),
            "directory": f.directory,
            "multi_file": f.multi_file,
            "detect": True,
            "inspect": "full" if _available(f.reader) else f"partial: Python module '{f.reader}' not installed here",
            "run_here": bool(f.runtime) and _available(f.runtime),
            "runtime": f.runtime,
            "notes": f.notes,
            "convert_from": sorted({e.source for e in registry.edges() if e.target == f.name and e.source != f.name}),
            "convert_to": sorted({e.target for e in registry.edges() if e.source == f.name and e.target != f.name}),
        })
    edges = [{"name": e.name, "source": e.source, "target": e.target, "hardware": e.hardware, "queue": e.queue,
              "toolchain": e.toolchain, "tolerance": e.tolerance, "needs_input_specs": e.needs_input_specs,
              "description": e.description, "options": e.options.model_json_schema(),
              **({"worker_available": e.queue in live} if live is not None else {})}
             for e in registry.edges()]
    return {"formats": out, "edges": edges}


@router.get("/plan")
def plan(source: str, target: str, request: Request):
    """The route the planner would take, from the same declarations that route the jobs."""
    return planner.plan(source, target, {}, _live(request)).to_dict(_live(request))
