"""Fallback metadata: checkpoints.inferred_fields and the W&B API cache.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("checkpoints", sa.Column("inferred_fields", sa.Text(), nullable=True))
    op.create_table(
        "wandb_run_cache",
        sa.Column("run_path", sa.String(), nullable=False),
        sa.Column("fetched_at", sa.String(), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("config_json", sa.Text(), nullable=True),
        sa.Column("summary_json", sa.Text(), nullable=True),
        sa.Column("history_json", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("run_path", name=op.f("pk_wandb_run_cache")),
    )


def downgrade() -> None:
    op.drop_table("wandb_run_cache")
    # The column is not indexed and no view uses it: a plain DROP COLUMN on SQLite >= 3.35.
    op.drop_column("checkpoints", "inferred_fields")
