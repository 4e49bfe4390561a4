"""Every SQL query of the catalog, in one place."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.catalog.tables import Model, ModelFile


def get_model(s: Session, model_id: str) -> Model | None:
    return s.get(Model, model_id)


def get_model_by_digest(s: Session, digest: str) -> Model | None:
    return s.scalar(select(Model).where(Model.digest == digest))


def list_models(s: Session, *, format: str | None = None, name: str | None = None, limit: int = 50,
                offset: int = 0) -> tuple[list[Model], int]:
    q = select(Model)
    if format:
        q = q.where(Model.format == format)
    if name:
        pattern = name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        q = q.where(Model.name.ilike(f"%{pattern}%", escape="\\"))
    total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
    rows = s.scalars(q.order_by(Model.created_at.desc(), Model.id).limit(limit).offset(offset)).all()
    return list(rows), total


def add_model(s: Session, *, files: list[dict[str, Any]], **fields: Any) -> Model:
    model = Model(**fields)
    model.files = [ModelFile(path=f["path"], sha256=f["sha256"], size_bytes=f["size"]) for f in files]
    s.add(model)
    s.flush()
    return model


def delete_model(s: Session, model: Model) -> list[str]:
    """Delete the model row; return the blob digests no other row references any more."""
    shas = {f.sha256 for f in model.files}
    s.delete(model)
    s.flush()
    still = set(s.scalars(select(ModelFile.sha256).where(ModelFile.sha256.in_(shas))).all()) if shas else set()
    return sorted(shas - still)


def blob_referenced(s: Session, sha256: str) -> bool:
    return s.scalar(select(func.count()).select_from(ModelFile).where(ModelFile.sha256 == sha256)) > 0
