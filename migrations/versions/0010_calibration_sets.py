"""calibration sets: .npz calibration inputs uploaded for a model's static INT8 conversions

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "calibration_sets",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("model_id", sa.String(32), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("inputs", JSONType, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name=op.f("fk_calibration_sets_model_id_models"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_calibration_sets")),
    )
    op.create_index(op.f("ix_calibration_sets_model_id"), "calibration_sets", ["model_id"])
    op.create_index(op.f("ix_calibration_sets_sha256"), "calibration_sets", ["sha256"])


def downgrade() -> None:
    op.drop_index(op.f("ix_calibration_sets_sha256"), table_name="calibration_sets")
    op.drop_index(op.f("ix_calibration_sets_model_id"), table_name="calibration_sets")
    op.drop_table("calibration_sets")
