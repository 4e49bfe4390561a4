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
    checks = await _checks(db, store)
    down = [k for k in ("catalog", "storage") if checks[k] != "ok"]  # the broker's backlog is informational
    if not down:
        return {"status": "ready", "checks": checks}
    return JSONResponse(status_code=503, content={"error": {
        "code": "not_ready", "message": f"not ready: {', '.join(down)} unreachable", "detail": {"checks": checks}}})


async def _checks(db, store) -> dict[str, str]:
    checks: dict[str, str] = {}
    for name, fn in (("catalog", lambda: ping(db.engine)), ("storage", store.ping)):
        try:
            with anyio.fail_after(5):
                await anyio.to_thread.run_sync(fn, abandon_on_cancel=True)
            checks[name] = "ok"
        except Exception as e:  # report what is down, whatever the driver raised
            checks[name] = f"down: {type(e).__name__}: {str(e)[:200]}"
    if checks["catalog"] == "ok":  # uploads and inference go on while the broker is down: said, not failed
        checks["dispatch"] = await anyio.to_thread.run_sync(_backlog, db)
    return checks

def _backlog(db) -> str:
    from app.catalog import repo

    with db.session() as s:
        n, err = repo.dispatch_backlog(s)
    if not n:
        return "ok"
    return (f"{n} step message{' waits' if n == 1 else 's wait'} for the broker (sent when it answers)"
            + (f": {err[:200]}" if err else ""))
