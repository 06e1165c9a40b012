"""Location: a checkpoint's identity becomes (location, checkpoint_path).

Existing rows get the location of the process that upgrades (its $CKPT_INDEX_LOCATION or host
name): an index used before this revision was filled by one machine, which keeps pruning and
updating its rows after the upgrade.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import os
import socket

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_VIEW_0001 = """
CREATE VIEW checkpoint_metrics_flat AS
SELECT c.id AS checkpoint_id, c.checkpoint_path, c.exp_name, c.architecture, c.encoder,
       c.epoch, c.global_step, c.training_phase, m.name AS metric, m.value
FROM checkpoints c JOIN checkpoint_metrics m ON m.checkpoint_id = c.id
WHERE c.checkpoint_exists
"""

_VIEW_0002 = """
CREATE VIEW checkpoint_metrics_flat AS
SELECT c.id AS checkpoint_id, c.location, c.checkpoint_path, c.exp_name, c.architecture,
       c.encoder, c.epoch, c.global_step, c.training_phase, m.name AS metric, m.value
FROM checkpoints c JOIN checkpoint_metrics m ON m.checkpoint_id = c.id
WHERE c.checkpoint_exists
"""


def _location() -> str:
    # Frozen copy of ckpt_index.index.engine.resolve_location as of this revision.
    return os.environ.get("CKPT_INDEX_LOCATION") or socket.gethostname() or "localhost"


def upgrade() -> None:
    op.execute("DROP VIEW checkpoint_metrics_flat")
    # ADD COLUMN with a constant default is an in-place ALTER on SQLite and PostgreSQL alike.
    op.add_column(
        "checkpoints", sa.Column("location", sa.String(), nullable=False, server_default="")
    )
    op.execute(sa.text("UPDATE checkpoints SET location = :loc").bindparams(loc=_location()))
    op.drop_index("ux_checkpoints_checkpoint_path", table_name="checkpoints")
    op.create_index(
        "ux_checkpoints_location_checkpoint_path",
        "checkpoints",
        ["location", "checkpoint_path"],
        unique=True,
    )
    op.create_index("ix_checkpoints_checkpoint_path", "checkpoints", ["checkpoint_path"])
    op.execute(_VIEW_0002)


def downgrade() -> None:
    op.execute("DROP VIEW checkpoint_metrics_flat")
    # 0001 allows one row per path: keep the lowest id of each path (the index is derived data;
    # a sync restores anything dropped here).
    op.execute(
        "DELETE FROM checkpoint_metrics WHERE checkpoint_id NOT IN "
        "(SELECT MIN(id) FROM checkpoints GROUP BY checkpoint_path)"
    )
    op.execute(
        "DELETE FROM checkpoints WHERE id NOT IN "
        "(SELECT MIN(id) FROM checkpoints GROUP BY checkpoint_path)"
    )
    op.drop_index("ix_checkpoints_checkpoint_path", table_name="checkpoints")
    op.drop_index("ux_checkpoints_location_checkpoint_path", table_name="checkpoints")
    op.create_index(
        "ux_checkpoints_checkpoint_path", "checkpoints", ["checkpoint_path"], unique=True
    )
    op.drop_column("checkpoints", "location")
    op.execute(_VIEW_0001)
