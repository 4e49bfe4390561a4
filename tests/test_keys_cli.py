"""`modelport keys` on the catalog directly (the first admin key is made on the host), and what
`modelport serve` does with no key: open on loopback (saying so), refused elsewhere unless
--insecure. Real subprocesses; nothing listens beyond loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from app import keys_cli


def _cli(tmp_path, *args, timeout=120):
    env = {**os.environ, "MODELPORT_DATA_DIR": str(tmp_path / "data")}
    env.pop("MODELPORT_API_KEY", None)
    return subprocess.run([sys.executable, "-m", "app.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_keys_create_list_revoke_on_the_catalog(tmp_path):
    r = _cli(tmp_path, "keys", "create", "--project", "team-a", "--scope", "admin", "--name", "first", "--json")
    assert r.returncode == 0, r.stderr
    made = json.loads(r.stdout)
    assert made["key"].startswith(f"mp_{made['id']}_") and made["scope"] == "admin" and made["project"] == "team-a"
    r = _cli(tmp_path, "keys", "list", "--json")
    (listed,) = json.loads(r.stdout)["items"]
    assert listed["id"] == made["id"] and "key" not in listed and made["key"] not in r.stdout
    r = _cli(tmp_path, "keys", "revoke", made["id"], "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["revoked_at"]
    r = _cli(tmp_path, "keys", "create", "--project", "bad name!", "--scope", "read")
    assert r.returncode == 2 and "project name" in r.stderr
    r = _cli(tmp_path, "keys", "revoke", "00000000")
    assert r.returncode == 2 and "no key with id '00000000'" in r.stderr


def test_serve_refuses_a_public_bind_with_no_key(tmp_path):
    r = _cli(tmp_path, "serve", "--host", "0.0.0.0", "--port", "1")  # refused before it binds anything
    assert r.returncode == 2
    assert "refusing to listen on 0.0.0.0 with no API key" in r.stderr and "--insecure" in r.stderr


def test_the_guard_lets_loopback_and_insecure_through_and_says_so(tmp_path, capsys):
    from tests.helpers import make_settings

    settings = make_settings(tmp_path)
    assert keys_cli.serve_guard(settings, "127.0.0.1", False) is None
    assert "the API is open (as project 'default') on 127.0.0.1" in capsys.readouterr().err
    assert keys_cli.serve_guard(settings, "0.0.0.0", True) is None
    assert "WARNING: no API key exists and --insecure was given" in capsys.readouterr().err
    assert keys_cli.serve_guard(settings, "0.0.0.0", False) == 2
    assert "refusing to listen" in capsys.readouterr().err
    from app import auth
    from app.catalog.db import Database

    db = Database(settings.resolved_database_url)
    auth.create_key(db, settings, project="p", scope="admin")
    db.dispose()
    assert keys_cli.serve_guard(settings, "0.0.0.0", False) is None  # a key exists: authentication is on
    assert capsys.readouterr().err == ""
