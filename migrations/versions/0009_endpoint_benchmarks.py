"""endpoint benchmarks: sweeps through a deployment's own endpoint

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "endpoint_benchmarks",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("project_id", sa.String(64), nullable=False),
        sa.Column("model_id", sa.String(32), nullable=False),
        sa.Column("artifact_id", sa.String(32), nullable=True),
        sa.Column("deployment_id", sa.String(32), nullable=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("settings", JSONType, nullable=False),
        sa.Column("results", JSONType, nullable=False),
        sa.Column("runner", sa.String(255), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"],
                                name=op.f("fk_endpoint_benchmarks_project_id_projects"), ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name=op.f("fk_endpoint_benchmarks_model_id_models"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["artifact_id"], ["artifacts.id"],
                                name=op.f("fk_endpoint_benchmarks_artifact_id_artifacts"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_endpoint_benchmarks")),
    )
    for col in ("project_id", "model_id", "artifact_id", "name", "status"):
        op.create_index(op.f(f"ix_endpoint_benchmarks_{col}"), "endpoint_benchmarks", [col])


def downgrade() -> None:
    for col in ("status", "name", "artifact_id", "model_id", "project_id"):
        op.drop_index(op.f(f"ix_endpoint_benchmarks_{col}"), table_name="endpoint_benchmarks")
    op.drop_table("endpoint_benchmarks")
