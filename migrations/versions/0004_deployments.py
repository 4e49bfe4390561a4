"""deployments

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "deployments",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("artifact_id", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("runtime", JSONType, nullable=False),
        sa.Column("batching", JSONType, nullable=False),
        sa.Column("forced", sa.Boolean(), nullable=False),
        sa.Column("load_ms", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["artifact_id"], ["artifacts.id"], name=op.f("fk_deployments_artifact_id_artifacts"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployments")),
        sa.UniqueConstraint("name", "version", name=op.f("uq_deployments_name")),
    )
    op.create_index(op.f("ix_deployments_name"), "deployments", ["name"])
    op.create_index(op.f("ix_deployments_artifact_id"), "deployments", ["artifact_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_deployments_artifact_id"), table_name="deployments")
    op.drop_index(op.f("ix_deployments_name"), table_name="deployments")
    op.drop_table("deployments")
