"""Typed dependencies shared by the routers."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from app.auth import Principal, scope_for
from app.catalog import repo
from app.catalog.db import Database
from app.catalog.tables import Model
from app.config import Settings
from app.errors import NotFound
from app.storage import ObjectStore


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_db(request: Request) -> Database:
    return request.app.state.db


def get_store(request: Request) -> ObjectStore:
    return request.app.state.store


SettingsDep = Annotated[Settings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_db)]
StoreDep = Annotated[ObjectStore, Depends(get_store)]


def authenticated(request: Request) -> Principal:
    """Who is asking (401 without a valid key once keys exist), and that their scope covers the
    method: reads (and inference) need ``read``, writes ``write``. Sync, so a catalog lookup runs on
    a thread."""
    p = request.app.state.auth.authenticate(request.headers.get("authorization"), request.headers.get("x-api-key"))
    p.require(scope_for(request.method, request.url.path))
    return p


PrincipalDep = Annotated[Principal, Depends(authenticated)]


def admin(principal: PrincipalDep) -> Principal:
    principal.require("admin")
    return principal


AdminDep = Annotated[Principal, Depends(admin)]


def valid_model(model_id: str, db: DatabaseDep, principal: PrincipalDep) -> Model:
    with db.session() as s:
        model = repo.get_model(s, model_id, principal.project)
        if model is None:
            raise NotFound(f"no model with id '{model_id}'", code="model_not_found", detail={"model_id": model_id})
        return model


ModelDep = Annotated[Model, Depends(valid_model)]


def valid_artifact(artifact_id: str, db: DatabaseDep, principal: PrincipalDep):
    """The artifact, if the caller's project owns it (a dependency: 404 before the body is read)."""
    with db.session() as s:
        art = repo.get_artifact(s, artifact_id, principal.project)
        if art is None:
            raise NotFound(f"no artifact with id '{artifact_id}'", code="artifact_not_found",
                           detail={"artifact_id": artifact_id})
        return art


ArtifactDep = Annotated[Any, Depends(valid_artifact)]
