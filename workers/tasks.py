"""Thin Celery tasks: ids in, ``app.pipeline.jobs`` does the work."""

from __future__ import annotations

import logging

from workers.celery_app import app

log = logging.getLogger("modelport.tasks")
_ctx: dict = {}


def context():
    """Catalog, store and dispatcher of this worker process, built once."""
    if "db" not in _ctx:
        from app.catalog.db import Database
        from app.config import get_settings
        from app.pipeline.dispatch import CeleryDispatcher
        from app.storage import open_store

        settings = get_settings()
        _ctx.update(settings=settings, db=Database(settings.resolved_database_url),
                    store=open_store(settings.resolved_storage_url, settings),
                    dispatcher=CeleryDispatcher(app), worker_id=_ctx.get("worker_id"))
    return _ctx


@app.task(name="modelport.run_step", ignore_result=True)
def run_step(step_id: str) -> str:
    from app.pipeline import jobs

    c = context()
    outcome = jobs.run_step(c["db"], c["store"], c["settings"], step_id, c["worker_id"] or jobs.worker_id("celery"),
                            c["dispatcher"])
    log.info("step %s: %s", step_id, outcome)
    return outcome
