"""job callbacks: the URLs to notify, and an outbox of signed deliveries

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as b:
        b.add_column(sa.Column("callbacks", JSONType, nullable=False, server_default="[]"))
    with op.batch_alter_table("jobs") as b:
        b.alter_column("callbacks", server_default=None)
    op.create_table(
        "callback_deliveries",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("secret", sa.String(256), nullable=False),
        sa.Column("payload", JSONType, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_callback_deliveries_job_id_jobs"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_callback_deliveries")),
    )
    op.create_index(op.f("ix_callback_deliveries_job_id"), "callback_deliveries", ["job_id"])
    op.create_index(op.f("ix_callback_deliveries_status"), "callback_deliveries", ["status"])
    op.create_index(op.f("ix_callback_deliveries_next_attempt_at"), "callback_deliveries", ["next_attempt_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_callback_deliveries_next_attempt_at"), table_name="callback_deliveries")
    op.drop_index(op.f("ix_callback_deliveries_status"), table_name="callback_deliveries")
    op.drop_index(op.f("ix_callback_deliveries_job_id"), table_name="callback_deliveries")
    op.drop_table("callback_deliveries")
    with op.batch_alter_table("jobs") as b:
        b.drop_column("callbacks")
