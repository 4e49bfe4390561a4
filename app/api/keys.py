"""/v1/keys: API keys of the caller's project (admin keys only). The key itself is shown once."""

from __future__ import annotations

import datetime as dt

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from app import auth
from app.api.deps import AdminDep, DatabaseDep, PrincipalDep, SettingsDep

router = APIRouter(prefix="/v1/keys", tags=["keys"])


class KeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", max_length=128)
    scope: str = Field(default="read", pattern="^(read|write|admin)$")
    expires_at: dt.datetime | None = None


@router.post("", status_code=201)
async def create_key(body: KeyRequest, request: Request, principal: AdminDep, db: DatabaseDep, settings: SettingsDep):
    view, token = await anyio.to_thread.run_sync(lambda: auth.create_key(
        db, settings, project=principal.project, scope=body.scope, name=body.name, expires_at=body.expires_at))
    request.app.state.auth.forget()
    return JSONResponse({**view, "key": token, "note": "shown once: store it now"}, status_code=201)


@router.get("")
def list_keys(principal: AdminDep, db: DatabaseDep):
    return {"items": auth.list_keys(db, principal.project)}


@router.get("/current")
def current_key(request: Request, principal: PrincipalDep):
    """Who this request acts as: the key's project, scope and id (any scope may ask); with keys off,
    the default project with every scope and ``"auth_required": false``."""
    return {"project": principal.project, "scope": principal.scope, "key_id": principal.key_id,
            "auth_required": request.app.state.auth.required()}


@router.delete("/{key_id}")
def revoke_key(key_id: str, request: Request, principal: AdminDep, db: DatabaseDep):
    view = auth.revoke_key(db, key_id, principal.project)
    request.app.state.auth.forget()
    return view
