"""projects and API keys: models and deployments belong to a project; deployments may serve an upload

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_projects")),
    )
    # every row made before projects belongs to the default one
    op.execute(sa.text("INSERT INTO projects (id, created_at) VALUES ('default', CURRENT_TIMESTAMP)"))
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(16), nullable=False),
        sa.Column("project_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("scopes", JSONType, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], name=op.f("fk_api_keys_project_id_projects"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
    )
    op.create_index(op.f("ix_api_keys_project_id"), "api_keys", ["project_id"])
    with op.batch_alter_table("models") as b:  # SQLite: no ALTER of constraints, so a table copy
        b.add_column(sa.Column("project_id", sa.String(64), nullable=False, server_default="default"))
        b.drop_constraint("uq_models_digest", type_="unique")
        b.create_unique_constraint(op.f("uq_models_project_id"), ["project_id", "digest"])
        b.create_foreign_key(op.f("fk_models_project_id_projects"), "projects", ["project_id"], ["id"],
                             ondelete="RESTRICT")
        b.create_index(op.f("ix_models_project_id"), ["project_id"])
        b.create_index(op.f("ix_models_digest"), ["digest"])
    with op.batch_alter_table("models") as b:
        b.alter_column("project_id", server_default=None)
    with op.batch_alter_table("deployments") as b:
        b.add_column(sa.Column("project_id", sa.String(64), nullable=False, server_default="default"))
        b.add_column(sa.Column("model_id", sa.String(32), nullable=True))
        b.alter_column("artifact_id", existing_type=sa.String(32), nullable=True)
        b.drop_constraint("uq_deployments_name", type_="unique")
        b.create_unique_constraint(op.f("uq_deployments_project_id"), ["project_id", "name", "version"])
        b.create_foreign_key(op.f("fk_deployments_project_id_projects"), "projects", ["project_id"], ["id"],
                             ondelete="RESTRICT")
        b.create_foreign_key(op.f("fk_deployments_model_id_models"), "models", ["model_id"], ["id"],
                             ondelete="CASCADE")
        b.create_index(op.f("ix_deployments_project_id"), ["project_id"])
        b.create_index(op.f("ix_deployments_model_id"), ["model_id"])
    with op.batch_alter_table("deployments") as b:
        b.alter_column("project_id", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("deployments") as b:
        b.drop_index(op.f("ix_deployments_model_id"))
        b.drop_index(op.f("ix_deployments_project_id"))
        b.drop_constraint(op.f("fk_deployments_model_id_models"), type_="foreignkey")
        b.drop_constraint(op.f("fk_deployments_project_id_projects"), type_="foreignkey")
        b.drop_constraint(op.f("uq_deployments_project_id"), type_="unique")
        b.create_unique_constraint("uq_deployments_name", ["name", "version"])
        b.drop_column("model_id")
        b.drop_column("project_id")
    op.execute(sa.text("DELETE FROM deployments WHERE artifact_id IS NULL"))
    with op.batch_alter_table("deployments") as b:
        b.alter_column("artifact_id", existing_type=sa.String(32), nullable=False)
    with op.batch_alter_table("models") as b:
        b.drop_index(op.f("ix_models_digest"))
        b.drop_index(op.f("ix_models_project_id"))
        b.drop_constraint(op.f("fk_models_project_id_projects"), type_="foreignkey")
        b.drop_constraint(op.f("uq_models_project_id"), type_="unique")
        b.create_unique_constraint("uq_models_digest", ["digest"])
        b.drop_column("project_id")
    op.drop_index(op.f("ix_api_keys_project_id"), table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_table("projects")
