"""blob deletions: deferred, race-free removal of unreferenced blobs

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "blob_deletions",
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sha256", name=op.f("pk_blob_deletions")),
    )
    op.create_index(op.f("ix_blob_deletions_requested_at"), "blob_deletions", ["requested_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_blob_deletions_requested_at"), table_name="blob_deletions")
    op.drop_table("blob_deletions")
