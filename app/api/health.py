"""Liveness and readiness."""

from __future__ import annotations

import anyio
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app import __version__
from app.api.deps import DatabaseDep, StoreDep
from app.catalog.db import ping

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz():
    return {"status": "ok", "version": __version__}


@router.get("/readyz")
async def readyz(db: DatabaseDep, store: StoreDep):
    checks: dict[str, str] = {}
    for name, fn in (("catalog", lambda: ping(db.engine)), ("storage", store.ping)):
        try:
            with anyio.fail_after(5):
                await anyio.to_thread.run_sync(fn, abandon_on_cancel=True)
            checks[name] = "ok"
        except Exception as e:  # report what is down, whatever the driver raised
            checks[name] = f"down: {type(e).__name__}: {str(e)[:200]}"
    ok = all(v == "ok" for v in checks.values())
    if ok:
        return {"status": "ready", "checks": checks}
    down = [k for k, v in checks.items() if v != "ok"]
    return JSONResponse(status_code=503, content={"error": {
        "code": "not_ready", "message": f"not ready: {', '.join(down)} unreachable", "detail": {"checks": checks}}})
