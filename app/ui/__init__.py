"""The web UI at ``/ui``: server-rendered page shells (Jinja2) whose data all comes from the public
``/v1`` API, fetched by the browser with the signed-in key (``static/js/``). Nothing here reads the
catalog or calls a service: what the page shows, the API answers (tests/test_import_rules.py holds
this package to the web framework, Jinja2 and the standard library).

The key lives in the tab's ``sessionStorage`` and travels only in ``Authorization: Bearer`` headers:
never in a URL, a cookie or the HTML, so these pages hold no data and need no key themselves."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

HERE = Path(__file__).parent
MODEL_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# scripts, styles and API calls from this origin only: no inline script, no CDN, no framing
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                               "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
                               "frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def _assets_version() -> str:
    """A digest of the static files: their URLs change when they do (no stale script after an upgrade)."""
    h = hashlib.sha256()
    for p in sorted((HERE / "static").rglob("*")):
        if p.is_file():
            h.update(p.relative_to(HERE).as_posix().encode() + p.read_bytes())
    return h.hexdigest()[:12]


def mount(app: FastAPI) -> None:
    """``/ui`` (models), ``/ui/models/{id}`` (one model), ``/ui/static/…``; ``/`` leads to ``/ui``."""
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.globals["assets"] = _assets_version()
    router = APIRouter(include_in_schema=False)

    def page(request: Request, name: str, status: int = 200, **context):
        return templates.TemplateResponse(request, name, context, status_code=status, headers=HEADERS)

    @router.get("/")
    def root():
        return RedirectResponse("/ui", status_code=307)

    @router.get("/ui")
    def models_page(request: Request):
        return page(request, "models.html")

    @router.get("/ui/models/{model_id}")
    def model_page(request: Request, model_id: str):
        if not MODEL_ID.match(model_id):
            return page(request, "missing.html", 404, model_id=model_id)
        return page(request, "model.html", model_id=model_id)

    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="ui-static")
