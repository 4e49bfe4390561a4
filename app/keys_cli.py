"""`modelport keys create|list|revoke` on the catalog directly (the first admin key is made on the
host itself, like `modelport db`), and the check `modelport serve` makes before it listens."""

from __future__ import annotations

import datetime as dt
import json
import sys


def add_parser(sub) -> None:
    keys = sub.add_parser("keys", help="API keys, on the catalog directly (the first admin key is made here)")
    ks = keys.add_subparsers(dest="keys_cmd", required=True)
    create = ks.add_parser("create", help="make a key; it is printed once")
    create.add_argument("--project", required=True)
    create.add_argument("--scope", choices=["read", "write", "admin"], default="read")
    create.add_argument("--name", default="")
    create.add_argument("--expires-days", type=float, default=None)
    create.add_argument("--json", action="store_true")
    lst = ks.add_parser("list", help="keys (ids, scopes, projects; never the secrets)")
    lst.add_argument("--project", default=None)
    lst.add_argument("--json", action="store_true")
    revoke = ks.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    revoke.add_argument("--json", action="store_true")


def run(args, settings) -> int:
    from app import auth
    from app.catalog.db import Database, upgrade
    from app.errors import ModelportError

    db = Database(settings.resolved_database_url)
    try:
        upgrade(db.engine)
        if args.keys_cmd == "create":
            expires = (dt.datetime.now(dt.UTC) + dt.timedelta(days=args.expires_days)) if args.expires_days else None
            view, token = auth.create_key(db, settings, project=args.project, scope=args.scope, name=args.name,
                                          expires_at=expires)
            if args.json:
                print(json.dumps({**view, "key": token}))
            else:
                print(f"key {view['id']} ({view['scope']}, project {view['project']}); shown once, store it now:")
                print(token)
        elif args.keys_cmd == "list":
            rows = auth.list_keys(db, args.project)
            if args.json:
                print(json.dumps({"items": rows}))
            else:
                for k in rows:
                    state = "revoked" if k["revoked_at"] else ("expires " + k["expires_at"] if k["expires_at"] else "")
                    print(f"{k['id']}  {k['project']:<20} {k['scope']:<6} {k['name']}  {state}".rstrip())
        else:
            view = auth.revoke_key(db, args.key_id)
            print(json.dumps(view) if args.json else f"key {view['id']} revoked at {view['revoked_at']}")
        return 0
    except ModelportError as e:
        print(f"modelport keys: {e.message}", file=sys.stderr)
        return 2
    finally:
        db.dispose()


def serve_guard(settings, host: str, insecure: bool) -> int | None:
    """Before `modelport serve` listens: None to go on (saying so when it runs open), or an exit code."""
    from app import auth
    from app.catalog.db import Database, upgrade

    db = Database(settings.resolved_database_url)
    try:
        upgrade(db.engine)
        open_ = not auth.Authenticator(db, settings).required()
    finally:
        db.dispose()
    if not open_:
        return None
    if auth.is_loopback(host):
        print(f"modelport serve: no API key exists, so the API is open (as project 'default') on {host}; make one "
              "with `modelport keys create --project P --scope admin` to turn authentication on", file=sys.stderr)
        return None
    if insecure:
        print(f"modelport serve: WARNING: no API key exists and --insecure was given: anyone who reaches {host} can "
              "read, change and delete every model and deployment", file=sys.stderr)
        return None
    print(f"modelport serve: refusing to listen on {host} with no API key: anyone who reaches it could read, change "
          "and delete everything. Make a key first (`modelport keys create --project P --scope admin`), listen on "
          "127.0.0.1, or pass --insecure", file=sys.stderr)
    return 2
