"""`modelport serve | db upgrade | db downgrade | formats`."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="modelport", description="convert, prove, measure and serve models")
    sub = parser.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser("serve", help="run the API (embedded defaults unless MODELPORT_* is set)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int, default=1)
    db = sub.add_parser("db", help="catalog migrations")
    db.add_argument("action", choices=["upgrade", "downgrade", "current"])
    db.add_argument("revision", nargs="?", default=None)
    sub.add_parser("formats", help="list the formats this host understands")
    worker = sub.add_parser("worker", help="run a Celery worker for hardware queues (needs MODELPORT_BROKER_URL)")
    worker.add_argument("--queues", "-Q", default="", help="comma-separated: cpu,intel,gpu,apple,cpu.tf … "
                        "(default: every queue this host can serve)")
    worker.add_argument("--concurrency", "-c", type=int, default=1)
    args = parser.parse_args(argv)

    from app.config import get_settings

    settings = get_settings()
    if args.cmd == "serve":
        import uvicorn

        from app.main import create_asgi

        # no per-request access log or proxy-header rewriting on the hot path (set log level debug for
        # request logs); the inference routes bypass FastAPI's routing (app.api.fastpath)
        uvicorn.run(create_asgi(settings), host=args.host or settings.host, port=args.port or settings.port,
                    log_level=settings.log_level, http="httptools", access_log=settings.log_level == "debug",
                    proxy_headers=False, server_header=False)
        return 0
    if args.cmd == "db":
        from app.catalog.db import Database, downgrade, upgrade

        database = Database(settings.resolved_database_url)
        if args.action == "upgrade":
            upgrade(database.engine, args.revision or "head")
        elif args.action == "downgrade":
            downgrade(database.engine, args.revision or "-1")
        else:
            from alembic.runtime.migration import MigrationContext

            with database.engine.connect() as conn:
                print(MigrationContext.configure(conn).get_current_revision())
        return 0
    if args.cmd == "worker":
        return _worker(settings, args)
    if args.cmd == "formats":
        from app.pipeline import formats

        json.dump(formats.describe(), sys.stdout, indent=2)
        print()
        return 0
    return 2


def _worker(settings, args) -> int:
    """Check the queues against this host, announce the worker, heartbeat and reap, run Celery."""
    import threading

    from app import host
    from app.ingest import blobs
    from app.pipeline import jobs

    if not settings.broker_url:
        print("modelport worker: set MODELPORT_BROKER_URL (e.g. redis://127.0.0.1:6379/0); without a broker "
              "`modelport serve` runs conversions in-process", file=sys.stderr)
        return 2
    servable = host.servable_queues(settings)
    requested = [q for q in args.queues.split(",") if q] or sorted(q for q, why in servable.items() if not why)
    refused = {q: servable.get(q, "no conversion edge uses this queue") for q in requested
               if q not in servable or servable[q]}
    if refused:
        for q, why in refused.items():
            print(f"modelport worker: refusing queue '{q}': {why}", file=sys.stderr)
        return 2
    from app.catalog.db import upgrade
    from workers import tasks
    from workers.celery_app import app as celery_app

    wid = jobs.worker_id("celery")
    tasks._ctx["worker_id"] = wid
    ctx = tasks.context()
    upgrade(ctx["db"].engine)
    caps = host.describe(settings)
    jobs.announce(ctx["db"], wid, requested, caps)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(min(5.0, settings.worker_stale_s / 3)):
            try:
                jobs.announce(ctx["db"], wid, requested, caps)
                jobs.reap(ctx["db"], ctx["dispatcher"], settings)
            except Exception as e:  # keep beating through a database blip
                print(f"modelport worker: heartbeat failed: {e}", file=sys.stderr)

    threading.Thread(target=beat, daemon=True, name="modelport-heartbeat").start()
    blobs.start_sweeper(ctx["db"], ctx["store"], settings, stop)
    print(f"modelport worker {wid}: queues {', '.join(requested)}", flush=True)
    try:
        celery_app.worker_main([
            "worker", "-Q", ",".join(requested), "-n", wid.replace("@", "-") + "@%h",
            "--pool", "solo" if args.concurrency == 1 else "threads", "--concurrency", str(args.concurrency),
            "--without-gossip", "--without-mingle", "-l", settings.log_level.upper()])
    finally:
        stop.set()
        from app.catalog import repo

        with ctx["db"].session() as s:
            repo.remove_worker(s, wid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
