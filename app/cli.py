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
    args = parser.parse_args(argv)

    from app.config import get_settings

    settings = get_settings()
    if args.cmd == "serve":
        import uvicorn

        from app.main import create_app

        uvicorn.run(create_app(settings), host=args.host or settings.host, port=args.port or settings.port,
                    log_level=settings.log_level, http="httptools")
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
    if args.cmd == "formats":
        from app.api.formats import list_formats

        json.dump(list_formats(), sys.stdout, indent=2)
        print()
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
