"""The catalog on SQLite and PostgreSQL: schema built by the migrations, reversible, in step
with the SQLAlchemy tables, and the queries behave the same on both."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from app.catalog import repo
from app.catalog.db import Database, downgrade, upgrade


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'catalog.db'}"
    else:
        url = request.getfixturevalue("postgres_server_url")
    database = Database(url)
    downgrade_to_base(database)
    upgrade(database.engine)
    yield database
    downgrade_to_base(database)
    database.dispose()


def downgrade_to_base(database: Database) -> None:
    if sa.inspect(database.engine).has_table("alembic_version"):
        downgrade(database.engine, "base")


def test_migrations_are_reversible_and_match_the_tables(db):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from app.catalog.tables import Base

    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []
    names = set(sa.inspect(db.engine).get_table_names())
    assert {"models", "model_files", "alembic_version"} <= names
    downgrade(db.engine, "base")
    assert set(sa.inspect(db.engine).get_table_names()) - {"alembic_version"} == set()
    upgrade(db.engine)
    assert {"models", "model_files"} <= set(sa.inspect(db.engine).get_table_names())


def _add(s, digest: str, name: str = "m", fmt: str = "onnx", shas=("a" * 64,)):
    return repo.add_model(s, files=[{"path": f"f{i}", "sha256": sha, "size": 10} for i, sha in enumerate(shas)],
                          digest=digest, name=name, format=fmt, primary_file="f0", is_directory=False,
                          size_bytes=10, file_count=len(shas), original_filename=None,
                          user_metadata={"k": [1, 2]}, inspection={"format": fmt, "inputs": []}, warnings=[])


def test_add_get_list_delete_and_shared_blobs(db):
    with db.session() as s:
        m1 = _add(s, "1" * 64, name="resnet_50%", shas=("a" * 64, "b" * 64))
        m2 = _add(s, "2" * 64, name="bert", fmt="safetensors", shas=("b" * 64,))
        id1, id2 = m1.id, m2.id
    with db.session() as s:
        got = repo.get_model(s, id1)
        assert got.user_metadata == {"k": [1, 2]} and [f.path for f in got.files] == ["f0", "f1"]
        assert repo.get_model_by_digest(s, "2" * 64).id == id2
        rows, total = repo.list_models(s, format="safetensors")
        assert total == 1 and rows[0].id == id2
        # LIKE wildcards in the filter are literal
        assert repo.list_models(s, name="50%")[1] == 1
        assert repo.list_models(s, name="n_t")[1] == 0  # unescaped, "_" would match "resnet"
        assert repo.list_models(s, limit=1, offset=1)[1] == 2
    with db.session() as s:
        orphans = repo.delete_model(s, repo.get_model(s, id1))
    assert orphans == ["a" * 64]  # "b" is still used by the other model
    with db.session() as s:
        assert repo.get_model(s, id1) is None
        assert s.scalar(sa.text("SELECT count(*) FROM model_files")) == 1  # cascade removed m1's files


def test_digest_is_unique(db):
    with db.session() as s:
        _add(s, "3" * 64)
    with pytest.raises(IntegrityError), db.session() as s:
        _add(s, "3" * 64)
