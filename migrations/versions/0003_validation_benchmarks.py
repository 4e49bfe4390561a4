"""validation verdicts, benchmark results, step kinds, sample inputs

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("job_steps") as b:  # batch: SQLite cannot ALTER in place
        b.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="convert"))
    with op.batch_alter_table("job_steps") as b:
        b.alter_column("kind", server_default=None)
    with op.batch_alter_table("models") as b:
        b.add_column(sa.Column("samples_sha256", sa.String(64), nullable=True))
    op.create_table(
        "validations",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("artifact_id", sa.String(32), nullable=False),
        sa.Column("job_id", sa.String(32), nullable=True),
        sa.Column("step_id", sa.String(32), nullable=True),
        sa.Column("reference", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("profile", sa.String(16), nullable=False),
        sa.Column("max_abs_err", sa.Float(), nullable=True),
        sa.Column("worst_output", sa.String(255), nullable=True),
        sa.Column("report", JSONType, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["artifact_id"], ["artifacts.id"], name=op.f("fk_validations_artifact_id_artifacts"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_validations")),
    )
    op.create_index(op.f("ix_validations_artifact_id"), "validations", ["artifact_id"])
    op.create_index(op.f("ix_validations_status"), "validations", ["status"])
    op.create_table(
        "benchmarks",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("artifact_id", sa.String(32), nullable=False),
        sa.Column("job_id", sa.String(32), nullable=True),
        sa.Column("step_id", sa.String(32), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("settings", JSONType, nullable=False),
        sa.Column("load_ms", sa.Float(), nullable=True),
        sa.Column("p50_ms", sa.Float(), nullable=True),
        sa.Column("p99_ms", sa.Float(), nullable=True),
        sa.Column("throughput", sa.Float(), nullable=True),
        sa.Column("host", JSONType, nullable=False),
        sa.Column("results", JSONType, nullable=False),
        sa.Column("object_key", sa.String(255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["artifact_id"], ["artifacts.id"], name=op.f("fk_benchmarks_artifact_id_artifacts"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_benchmarks")),
    )
    op.create_index(op.f("ix_benchmarks_artifact_id"), "benchmarks", ["artifact_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_benchmarks_artifact_id"), table_name="benchmarks")
    op.drop_table("benchmarks")
    op.drop_index(op.f("ix_validations_status"), table_name="validations")
    op.drop_index(op.f("ix_validations_artifact_id"), table_name="validations")
    op.drop_table("validations")
    with op.batch_alter_table("models") as b:
        b.drop_column("samples_sha256")
    with op.batch_alter_table("job_steps") as b:
        b.drop_column("kind")
