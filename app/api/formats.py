"""/v1/formats: what modelport knows and what this host can read and run."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.conversion import planner
from app.pipeline import formats

router = APIRouter(prefix="/v1/formats", tags=["formats"])


def _live(request: Request) -> set[str]:
    from app.pipeline.jobs import live_queues

    with request.app.state.db.session() as s:
        return live_queues(s, request.app.state.settings)


@router.get("")
def list_formats(request: Request):
    return formats.describe(_live(request))


@router.get("/plan")
def plan(source: str, target: str, request: Request):
    """The route the planner would take, from the same declarations that route the jobs."""
    return planner.plan(source, target, {}, _live(request)).to_dict(_live(request))
