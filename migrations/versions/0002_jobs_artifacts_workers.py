"""conversion jobs, their steps, artifacts and workers

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _ts() -> list[sa.Column]:
    return [sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False)]


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("model_id", sa.String(32), nullable=False),
        sa.Column("target", sa.String(32), nullable=False),
        sa.Column("options", JSONType, nullable=False),
        sa.Column("input_specs", JSONType, nullable=True),
        sa.Column("request_key", sa.String(64), nullable=False),
        sa.Column("active_key", sa.String(64), nullable=True),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("plan", JSONType, nullable=False),
        sa.Column("error", JSONType, nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        *_ts(),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name=op.f("fk_jobs_model_id_models"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.UniqueConstraint("active_key", name=op.f("uq_jobs_active_key")),
    )
    op.create_index(op.f("ix_jobs_model_id"), "jobs", ["model_id"])
    op.create_index(op.f("ix_jobs_request_key"), "jobs", ["request_key"])
    op.create_index(op.f("ix_jobs_status"), "jobs", ["status"])
    op.create_table(
        "job_steps",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("edge", sa.String(96), nullable=False),
        sa.Column("queue", sa.String(32), nullable=False),
        sa.Column("options", JSONType, nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(255), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.Column("input_artifact_id", sa.String(32), nullable=True),
        sa.Column("output_artifact_id", sa.String(32), nullable=True),
        sa.Column("error", JSONType, nullable=True),
        sa.Column("log", sa.Text(), nullable=False),
        *_ts(),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_job_steps_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_steps")),
        sa.UniqueConstraint("job_id", "index", name=op.f("uq_job_steps_job_id")),
    )
    op.create_index(op.f("ix_job_steps_job_id"), "job_steps", ["job_id"])
    op.create_index(op.f("ix_job_steps_status"), "job_steps", ["status"])
    op.create_table(
        "artifacts",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("model_id", sa.String(32), nullable=False),
        sa.Column("job_id", sa.String(32), nullable=True),
        sa.Column("step_id", sa.String(32), nullable=True),
        sa.Column("parent_artifact_id", sa.String(32), nullable=True),
        sa.Column("format", sa.String(32), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("primary_file", sa.String(1024), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("file_count", sa.Integer(), nullable=False),
        sa.Column("edge", sa.String(96), nullable=False),
        sa.Column("options", JSONType, nullable=False),
        sa.Column("toolchain", JSONType, nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("inspection", JSONType, nullable=False),
        sa.Column("warnings", JSONType, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name=op.f("fk_artifacts_model_id_models"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_artifacts_job_id_jobs"), ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_artifacts")),
    )
    op.create_index(op.f("ix_artifacts_model_id"), "artifacts", ["model_id"])
    op.create_index(op.f("ix_artifacts_job_id"), "artifacts", ["job_id"])
    op.create_index(op.f("ix_artifacts_format"), "artifacts", ["format"])
    op.create_index(op.f("ix_artifacts_digest"), "artifacts", ["digest"])
    op.create_table(
        "artifact_files",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("artifact_id", sa.String(32), nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["artifact_id"], ["artifacts.id"], name=op.f("fk_artifact_files_artifact_id_artifacts"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_artifact_files")),
        sa.UniqueConstraint("artifact_id", "path", name=op.f("uq_artifact_files_artifact_id")),
    )
    op.create_index(op.f("ix_artifact_files_artifact_id"), "artifact_files", ["artifact_id"])
    op.create_index(op.f("ix_artifact_files_sha256"), "artifact_files", ["sha256"])
    op.create_table(
        "workers",
        sa.Column("id", sa.String(255), nullable=False),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("queues", JSONType, nullable=False),
        sa.Column("capabilities", JSONType, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workers")),
    )
    op.create_index(op.f("ix_workers_heartbeat_at"), "workers", ["heartbeat_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_workers_heartbeat_at"), table_name="workers")
    op.drop_table("workers")
    op.drop_index(op.f("ix_artifact_files_sha256"), table_name="artifact_files")
    op.drop_index(op.f("ix_artifact_files_artifact_id"), table_name="artifact_files")
    op.drop_table("artifact_files")
    for ix in ("digest", "format", "job_id", "model_id"):
        op.drop_index(op.f(f"ix_artifacts_{ix}"), table_name="artifacts")
    op.drop_table("artifacts")
    op.drop_index(op.f("ix_job_steps_status"), table_name="job_steps")
    op.drop_index(op.f("ix_job_steps_job_id"), table_name="job_steps")
    op.drop_table("job_steps")
    for ix in ("status", "request_key", "model_id"):
        op.drop_index(op.f(f"ix_jobs_{ix}"), table_name="jobs")
    op.drop_table("jobs")
