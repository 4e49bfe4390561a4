"""models and their files

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("format", sa.String(32), nullable=False),
        sa.Column("primary_file", sa.String(1024), nullable=False),
        sa.Column("is_directory", sa.Boolean(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("file_count", sa.Integer(), nullable=False),
        sa.Column("original_filename", sa.String(1024), nullable=True),
        sa.Column("metadata", JSONType, nullable=False),
        sa.Column("inspection", JSONType, nullable=False),
        sa.Column("warnings", JSONType, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_models")),
        sa.UniqueConstraint("digest", name=op.f("uq_models_digest")),
    )
    op.create_index(op.f("ix_models_name"), "models", ["name"])
    op.create_index(op.f("ix_models_format"), "models", ["format"])
    op.create_table(
        "model_files",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model_id", sa.String(32), nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_model_files_model_id_models"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_files")),
        sa.UniqueConstraint("model_id", "path", name=op.f("uq_model_files_model_id")),
    )
    op.create_index(op.f("ix_model_files_model_id"), "model_files", ["model_id"])
    op.create_index(op.f("ix_model_files_sha256"), "model_files", ["sha256"])


def downgrade() -> None:
    op.drop_index(op.f("ix_model_files_sha256"), table_name="model_files")
    op.drop_index(op.f("ix_model_files_model_id"), table_name="model_files")
    op.drop_table("model_files")
    op.drop_index(op.f("ix_models_format"), table_name="models")
    op.drop_index(op.f("ix_models_name"), table_name="models")
    op.drop_table("models")
