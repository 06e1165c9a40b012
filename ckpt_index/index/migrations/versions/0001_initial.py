"""Initial schema: checkpoints, checkpoint_metrics, checkpoint_metrics_flat view.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Frozen copy of the view as released in this revision (never import it from models).
_VIEW_SQL = """
CREATE VIEW checkpoint_metrics_flat AS
SELECT c.id AS checkpoint_id, c.checkpoint_path, c.exp_name, c.architecture, c.encoder,
       c.epoch, c.global_step, c.training_phase, m.name AS metric, m.value
FROM checkpoints c JOIN checkpoint_metrics m ON m.checkpoint_id = c.id
WHERE c.checkpoint_exists
"""


def upgrade() -> None:
    op.create_table(
        "checkpoints",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("checkpoint_path", sa.String(), nullable=False),
        sa.Column("sidecar_path", sa.String(), nullable=True),
        sa.Column("exp_name", sa.String(), nullable=True),
        sa.Column("architecture", sa.String(), nullable=True),
        sa.Column("encoder", sa.String(), nullable=True),
        sa.Column("encoder_pretrained", sa.Boolean(), nullable=True),
        sa.Column("encoder_frozen", sa.Boolean(), nullable=True),
        sa.Column("decoder", sa.String(), nullable=True),
        sa.Column("head", sa.String(), nullable=True),
        sa.Column("loss", sa.String(), nullable=True),
        sa.Column("epoch", sa.Integer(), nullable=True),
        sa.Column("global_step", sa.BigInteger(), nullable=True),
        sa.Column("training_phase", sa.String(), nullable=True),
        sa.Column("max_epochs", sa.Integer(), nullable=True),
        sa.Column("precision", sa.Float(), nullable=True),
        sa.Column("recall", sa.Float(), nullable=True),
        sa.Column("hmean", sa.Float(), nullable=True),
        sa.Column("validation_loss", sa.Float(), nullable=True),
        sa.Column("monitor", sa.String(), nullable=True),
        sa.Column("mode", sa.String(), nullable=True),
        sa.Column("save_top_k", sa.Integer(), nullable=True),
        sa.Column("save_last", sa.Boolean(), nullable=True),
        sa.Column("created_at", sa.String(), nullable=True),
        sa.Column("hydra_config_path", sa.String(), nullable=True),
        sa.Column("wandb_run_id", sa.String(), nullable=True),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("warnings", sa.Text(), nullable=True),
        sa.Column("checkpoint_exists", sa.Boolean(), nullable=False),
        sa.Column("ckpt_size", sa.BigInteger(), nullable=True),
        sa.Column("ckpt_mtime_ns", sa.BigInteger(), nullable=True),
        sa.Column("sidecar_size", sa.BigInteger(), nullable=True),
        sa.Column("sidecar_mtime_ns", sa.BigInteger(), nullable=True),
        sa.Column("metadata_json", sa.Text(), nullable=True),
        sa.Column("indexed_at", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_checkpoints")),
    )
    op.create_index(
        "ux_checkpoints_checkpoint_path", "checkpoints", ["checkpoint_path"], unique=True
    )
    for column in ("exp_name", "architecture", "encoder", "epoch", "hmean", "status"):
        op.create_index(op.f(f"ix_checkpoints_{column}"), "checkpoints", [column])
    op.create_table(
        "checkpoint_metrics",
        sa.Column("checkpoint_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["checkpoint_id"],
            ["checkpoints.id"],
            name=op.f("fk_checkpoint_metrics_checkpoint_id_checkpoints"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("checkpoint_id", "name", name=op.f("pk_checkpoint_metrics")),
    )
    op.create_index("ix_checkpoint_metrics_name_value", "checkpoint_metrics", ["name", "value"])
    op.execute(_VIEW_SQL)


def downgrade() -> None:
    op.execute("DROP VIEW checkpoint_metrics_flat")
    op.drop_index("ix_checkpoint_metrics_name_value", table_name="checkpoint_metrics")
    op.drop_table("checkpoint_metrics")
    for column in ("exp_name", "architecture", "encoder", "epoch", "hmean", "status"):
        op.drop_index(op.f(f"ix_checkpoints_{column}"), table_name="checkpoints")
    op.drop_index("ux_checkpoints_checkpoint_path", table_name="checkpoints")
    op.drop_table("checkpoints")
