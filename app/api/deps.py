"""Typed dependencies shared by the routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

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


def valid_model(model_id: str, db: DatabaseDep) -> Model:
    with db.session() as s:
        model = repo.get_model(s, model_id)
        if model is None:
            raise NotFound(f"no model with id '{model_id}'", code="model_not_found", detail={"model_id": model_id})
        return model


ModelDep = Annotated[Model, Depends(valid_model)]
