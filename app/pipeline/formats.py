"""What modelport knows and what this host can read and run: ``GET /v1/formats`` and
``modelport formats``, read from the format, runtime and edge declarations."""

from __future__ import annotations

import importlib.util

from app.conversion import registry
from app.formats import all_formats


def _available(module: str | None) -> bool:
    return module is None or importlib.util.find_spec(module) is not None


def _runtime(f, hw: dict) -> dict:
    """Where the format runs, from its runner's declaration, and whether this host can."""
    from app import runners

    rt = runners.runtime_of(f.name)
    if rt is None:
        return {"runtime": None, "queue": runners.queue_for(f.name), "run_here": False}
    def here(r) -> bool:
        return r.toolchain == "main" and r.hardware in hw and _available(r.module)

    return {"runtime": rt.name, "runtime_module": rt.module, "hardware": rt.hardware, "toolchain": rt.toolchain,
            "queue": rt.queue, "run_here": here(rt),
            "runtimes": [{"runtime": r.name, "hardware": r.hardware, "queue": r.queue, "run_here": here(r)}
                         for r in runners.runtimes_of(f.name)]}


def describe(live: set[str] | None = None) -> dict:
    """Every declared format (where it runs, whether this host can read and run it) and every edge;
    with ``live`` (the queues live workers serve), whether a worker can take each edge now."""
    from app import host

    hw = host.hardware()
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
            **_runtime(f, hw),
            "weights_only": f.weights_only,
            "code_on_load": f.code_on_load,
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
