"""Who may import whom (../shared/DESIGN.md), read from the source: every import statement of
every module under app/ and workers/, function-level ones included."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "tensorflow", "openvino", "tensorrt", "coremltools", "onnxruntime")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module a file imports (``from a.b import c`` counts as a.b and a.b.c)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


MODULES = {_module_name(p): _imports(p) for d in ("app", "workers") for p in (ROOT / d).rglob("*.py")}


def _in(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def _violations(importers: tuple[str, ...], forbidden: tuple[str, ...], allow: tuple[str, ...] = ()) -> list[str]:
    return sorted(f"{mod} imports {imp}" for mod, imps in MODULES.items() if _in(mod, *importers)
                  and not _in(mod, *allow) for imp in imps if _in(imp, *forbidden))


def test_the_walk_sees_the_tree():
    assert {"app.main", "app.api.v2", "app.serving.dataplane", "app.pipeline.jobs", "workers.tasks"} <= set(MODULES)
    assert "app.serving.runtime" in MODULES["app.serving.dataplane"]  # function-level imports are read too


def test_serving_never_imports_api():
    assert _violations(("app.serving",), ("app.api", "app.main")) == []


def test_nothing_below_api_knows_the_web_framework():
    assert _violations(("app", "workers"), ("fastapi", "starlette"), allow=("app.api", "app.main", "app.ui")) == []


def test_the_web_ui_is_a_client_of_the_api():
    """app/ui serves page shells and static files; everything they show comes from the /v1 routes in
    the browser. It imports nothing of the service (no catalog, no pipeline, not even api/)."""
    assert "app.ui" in MODULES
    assert _violations(("app.ui",), ("app",)) == []
    assert _violations(("app",), ("app.ui",), allow=("app.main", "app.ui")) == []


def test_main_and_api_import_no_worker_module_and_no_celery():
    assert _violations(("app.main", "app.api", "app.serving"), ("workers", "celery")) == []
    # outside workers/, only the CLI's `modelport worker` starts Celery, and the dispatcher sends by task name
    assert _violations(("app",), ("workers",), allow=("app.cli",)) == []
    assert _violations(("app",), ("celery",), allow=("app.cli", "app.pipeline.dispatch")) == []


def test_all_sql_lives_in_the_catalog():
    assert _violations(("app", "workers"), ("sqlalchemy",), allow=("app.catalog",)) == []


def test_formats_conversion_runners_and_sandbox_know_no_http_database_or_queue():
    lower = ("app.formats", "app.conversion", "app.runners", "app.sandbox")
    upper = ("app.api", "app.catalog", "app.pipeline", "app.serving", "app.ingest", "app.storage", "app.main",
             "app.cli", "workers", "fastapi", "starlette", "sqlalchemy", "celery", "redis", "boto3")
    assert _violations(lower, upper) == []


def test_catalog_and_storage_stay_in_their_lane():
    # the catalog stores and queries: it does not interpret model bytes; storage knows no rows
    assert _violations(("app.catalog",), ("app.formats", "app.runners", "app.conversion", "app.api", "app.pipeline",
                                          "app.serving", "app.ingest")) == []
    assert _violations(("app.storage",), ("app.catalog", "sqlalchemy")) == []


def test_the_cli_never_calls_a_route_handler():
    assert sorted(i for i in MODULES["app.cli"] if _in(i, "app.api")) == []


@pytest.mark.parametrize("module", ["app", "app.main", "app.cli", "app.api.v2", "app.serving.dataplane",
                                    "app.pipeline.jobs", "app.runners", "app.host"])
def test_importing_stays_light(module):
    code = (f"import sys, {module}; heavy = [m for m in {HEAVY!r} if m in sys.modules]; "
            "print(','.join(heavy)); sys.exit(1 if heavy else 0)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"import {module} pulls in {out.stdout.strip()} {out.stderr[-500:]}"


def _route_handlers():
    for path in sorted((ROOT / "app" / "api").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and any(
                    isinstance(d, ast.Call) and getattr(d.func, "attr", "") in ("get", "post", "put", "delete", "patch")
                    for d in node.decorator_list):
                yield f"{path.stem}.{node.name}", sum(isinstance(x, ast.stmt) for x in ast.walk(node)) - 1


def test_route_handlers_are_short_and_build_no_rows():
    """Parse, one service call, shape the answer: a handler with more statements than this holds
    service logic that belongs below api/ (and the CLI could not reuse it)."""
    handlers = dict(_route_handlers())
    assert {"models.upload_model", "deployments.deploy", "jobs.report_all", "v2.infer"} <= set(handlers)
    assert {name: n for name, n in handlers.items() if n > 12} == {}
    assert _violations(("app.api",), ("app.catalog.tables",), allow=("app.api.schemas", "app.api.deps")) == []
