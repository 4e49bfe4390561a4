"""the dispatch outbox: each queued step's broker message, committed with the step

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "step_dispatches",
        sa.Column("step_id", sa.String(32), nullable=False),
        sa.Column("queue", sa.String(32), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["step_id"], ["job_steps.id"], name=op.f("fk_step_dispatches_step_id_job_steps"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("step_id", name=op.f("pk_step_dispatches")),
    )
    op.create_index(op.f("ix_step_dispatches_next_attempt_at"), "step_dispatches", ["next_attempt_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_step_dispatches_next_attempt_at"), table_name="step_dispatches")
    op.drop_table("step_dispatches")
