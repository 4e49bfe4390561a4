"""/v1/formats: what modelport knows and what this host can read and run."""

from __future__ import annotations

import importlib.util

from fastapi import APIRouter

from app.formats import all_formats

router = APIRouter(prefix="/v1/formats", tags=["formats"])


def _available(module: str | None) -> bool:
    return module is None or importlib.util.find_spec(module) is not None


@router.get("")
def list_formats():
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
            "convert_from": [],
            "convert_to": [],
        })
    return {"formats": out}
