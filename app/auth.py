"""API keys and projects: who is asking, and what they may see.

A key is ``mp_<id>_<secret>``: the 8-hex-digit ``id`` names it in logs and in ``/v1/keys``; the
catalog keeps only an HMAC-SHA256 of the secret under the server's key (``MODELPORT_SECRET_KEY``, or
``<data_dir>/secret-key``, made once with mode 0600), so a copy of the catalog holds no usable key.
Scopes nest: ``read`` ⊂ ``write`` ⊂ ``admin``. Every model (with its jobs, artifacts and checks) and
every deployment belongs to one project; a key sees its own project's rows only, and another
project's are answered 404 as if they did not exist.

Authentication is on as soon as one key exists (or with ``MODELPORT_AUTH=required``). Until then
every request acts for the ``default`` project with every scope — ``modelport serve`` says so at
start and refuses a non-loopback bind unless told ``--insecure``.

Checking a key is a dict lookup after its first use (verified keys are cached for ``CACHE_S``;
revoking through this replica drops them at once, elsewhere within ``CACHE_S``). Framework-free:
the FastAPI dependency and the ASGI fast path both call :meth:`Authenticator.authenticate`."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.catalog import repo
from app.catalog.tables import DEFAULT_PROJECT, utcnow
from app.errors import Forbidden, Unauthorized, Unprocessable

SCOPES = ("read", "write", "admin")
KEY = re.compile(r"^mp_([0-9a-f]{8})_([A-Za-z0-9_-]{20,128})$")
PROJECT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
CACHE_S = 10.0


@dataclass(frozen=True)
class Principal:
    project: str
    scope: str  # the highest scope held
    key_id: str | None  # None: authentication is off

    def allows(self, scope: str) -> bool:
        return SCOPES.index(self.scope) >= SCOPES.index(scope)

    def require(self, scope: str) -> None:
        if not self.allows(scope):
            raise Forbidden(f"this key ({self.key_id}) has scope '{self.scope}'; this request needs '{scope}'",
                            code="insufficient_scope", detail={"needs": scope, "has": self.scope})


OPEN = Principal(DEFAULT_PROJECT, "admin", None)


_INFERENCE = re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/infer$|^/v1/deployments/[^/]+/predict$")


def scope_for(method: str, path: str) -> str:
    """Reads need ``read``; so does inference (an app that predicts changes nothing); other writes ``write``."""
    if method in ("GET", "HEAD", "OPTIONS") or _INFERENCE.match(path):
        return "read"
    return "write"


# ------------------------------------------------------------------------------------ secrets


def server_secret(settings) -> bytes:
    if settings.secret_key:
        return settings.secret_key.encode()
    path = Path(settings.resolved_data_dir) / "secret-key"
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # made concurrently: use that one
        return path.read_bytes().strip()
    with os.fdopen(fd, "wb") as f:
        f.write(value)
    return value


def _hash(secret: bytes, value: str) -> str:
    return hmac.new(secret, value.encode(), hashlib.sha256).hexdigest()


# ------------------------------------------------------------------------------- key lifecycle


def check_project(name: str) -> str:
    if not PROJECT.match(name or ""):
        raise Unprocessable("a project name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
                            code="bad_project_name")
    return name


def key_view(k) -> dict[str, Any]:
    return {"id": k.id, "project": k.project_id, "name": k.name, "scope": k.scopes[0] if k.scopes else "read",
            "prefix": f"mp_{k.id}_", "created_at": k.created_at.isoformat(),
            "expires_at": k.expires_at.isoformat() if k.expires_at else None,
            "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None}


def create_key(db, settings, *, project: str, scope: str, name: str = "",
               expires_at: dt.datetime | None = None) -> tuple[dict[str, Any], str]:
    """A new key of ``project`` (made if new); its description and the key itself (shown once)."""
    check_project(project)
    if scope not in SCOPES:
        raise Unprocessable(f"scope must be one of {', '.join(SCOPES)}", code="bad_scope")
    if expires_at is not None and expires_at.tzinfo is None:
        expires_at = expires_at.replace(tzinfo=dt.UTC)
    secret = server_secret(settings)
    for _ in range(5):
        key_id, body = secrets.token_hex(4), secrets.token_urlsafe(32)
        token = f"mp_{key_id}_{body}"
        with db.session() as s:
            if repo.get_key(s, key_id) is not None:
                continue
            repo.ensure_project(s, project)
            row = repo.add_key(s, id=key_id, project_id=project, name=name[:128] or f"{scope} key",
                               secret_hash=_hash(secret, body), scopes=[scope], expires_at=expires_at)
            return key_view(row), token
    raise RuntimeError("could not draw an unused key id")


def ensure_admin_key(db, settings) -> str | None:
    """``MODELPORT_ADMIN_KEY`` (a key made elsewhere, e.g. a compose secret) as an admin key of
    ``MODELPORT_ADMIN_PROJECT``, unless its id exists already; its id, or None when unset."""
    token = settings.admin_key
    if not token:
        return None
    m = KEY.match(token.strip())
    if m is None:
        raise ValueError("MODELPORT_ADMIN_KEY must look like mp_<8 hex digits>_<20+ characters of [A-Za-z0-9_-]>; "
                         "make one with: python -c \"import secrets; print(f'mp_{secrets.token_hex(4)}_"
                         "{secrets.token_urlsafe(32)}')\"")
    key_id, body = m.groups()
    project = check_project(settings.admin_project)
    with db.session() as s:
        if repo.get_key(s, key_id) is None:
            repo.ensure_project(s, project)
            repo.add_key(s, id=key_id, project_id=project, name="admin key from MODELPORT_ADMIN_KEY",
                         secret_hash=_hash(server_secret(settings), body), scopes=["admin"])
    return key_id


def list_keys(db, project: str | None = None) -> list[dict[str, Any]]:
    with db.session() as s:
        return [key_view(k) for k in repo.list_keys(s, project)]


def revoke_key(db, key_id: str, project: str | None = None) -> dict[str, Any]:
    from app.errors import NotFound

    with db.session() as s:
        k = repo.get_key(s, key_id)
        if k is None or (project is not None and k.project_id != project):
            raise NotFound(f"no key with id '{key_id}'", code="key_not_found")
        if k.revoked_at is None:
            k.revoked_at = utcnow()
        return key_view(k)


# ------------------------------------------------------------------------------ authentication


class Authenticator:
    """Turns a request's credentials into a :class:`Principal` (cached, thread-safe)."""

    def __init__(self, db, settings):
        self.db, self.settings = db, settings
        self._secret: bytes | None = None
        self._cache: dict[str, tuple[float, Principal, dt.datetime | None]] = {}
        self._required: tuple[float, bool] | None = None
        self._lock = threading.Lock()

    @property
    def secret(self) -> bytes:
        if self._secret is None:
            self._secret = server_secret(self.settings)
        return self._secret

    def required(self) -> bool:
        """On with MODELPORT_AUTH=required, or once any key exists (checked every CACHE_S)."""
        if self.settings.auth == "required":
            return True
        now = time.monotonic()
        hit = self._required
        if hit is not None and (hit[1] or now - hit[0] < CACHE_S):
            return hit[1]  # once on, it stays on for this process
        try:
            with self.db.session() as s:
                on = repo.any_key(s)
        except Exception:
            if hit is None:
                raise
            # the catalog is unreachable: no key can be made meanwhile, so "none exists" stands (asked
            # again in CACHE_S); inference from loaded deployments goes on through the outage
            on = hit[1]
        self._required = (now, on)
        return on

    def forget(self) -> None:
        """After a key changed here: drop what was cached (other replicas: within CACHE_S)."""
        with self._lock:
            self._cache.clear()
            self._required = None

    def authenticate(self, authorization: str | None, api_key: str | None = None) -> Principal:
        """The principal of ``Authorization: Bearer <key>`` (or ``X-API-Key``); :data:`OPEN` while
        authentication is off. 401 when a key is needed and missing, malformed, unknown, revoked or
        expired. Blocking on a cache miss (a catalog query): call it off the event loop then."""
        token = api_key
        if authorization:
            kind, _, value = authorization.partition(" ")
            token = value.strip() if kind.lower() == "bearer" else None
            if token is None:
                raise Unauthorized("send the API key as 'Authorization: Bearer mp_…'", code="bad_authorization")
        if not token:
            if not self.required():
                return OPEN
            raise Unauthorized("this server needs an API key: send 'Authorization: Bearer mp_…' (or X-API-Key)",
                               code="missing_api_key")
        now = time.monotonic()
        hit = self._cache.get(token)
        if hit is not None and now - hit[0] < CACHE_S and (hit[2] is None or hit[2] > utcnow()):
            return hit[1]
        principal, expires = self._verify(token)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[token] = (now, principal, expires)
        return principal

    def cached(self, authorization: str | None, api_key: str | None = None) -> Principal | None:
        """The principal when it needs no catalog query (for the event loop), else None."""
        if not authorization and not api_key:
            hit = self._required
            if self.settings.auth != "required" and hit is not None and not hit[1] \
                    and time.monotonic() - hit[0] < CACHE_S:
                return OPEN
            return None
        token = api_key
        if authorization:
            kind, _, value = authorization.partition(" ")
            token = value.strip() if kind.lower() == "bearer" else None
        hit = self._cache.get(token) if token else None
        if hit is not None and time.monotonic() - hit[0] < CACHE_S and (hit[2] is None or hit[2] > utcnow()):
            return hit[1]
        return None

    def _verify(self, token: str) -> tuple[Principal, dt.datetime | None]:
        m = KEY.match(token)
        if m is None:
            raise Unauthorized("that is not a modelport API key (they look like mp_<id>_<secret>)",
                               code="invalid_api_key")
        key_id, body = m.groups()
        with self.db.session() as s:
            k = repo.get_key(s, key_id)
            if k is None or not hmac.compare_digest(k.secret_hash, _hash(self.secret, body)):
                raise Unauthorized("unknown API key", code="invalid_api_key", detail={"key_id": key_id})
            if k.revoked_at is not None:
                raise Unauthorized(f"API key {key_id} was revoked", code="revoked_api_key",
                                   detail={"key_id": key_id})
            expires = k.expires_at
            if expires is not None and expires.tzinfo is None:
                expires = expires.replace(tzinfo=dt.UTC)
            if expires is not None and expires <= utcnow():
                raise Unauthorized(f"API key {key_id} expired at {expires.isoformat()}", code="expired_api_key",
                                   detail={"key_id": key_id})
            return Principal(k.project_id, k.scopes[0] if k.scopes else "read", key_id), expires


def is_loopback(host: str) -> bool:
    import ipaddress

    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
