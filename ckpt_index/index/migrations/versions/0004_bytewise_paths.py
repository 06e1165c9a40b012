"""Bytewise paths on PostgreSQL: checkpoints.checkpoint_path collates "C".

A sync finds the rows below a root with a range on the path (``root/ <= path < root0``), which
holds only in byte order. SQLite compares text bytewise; a PostgreSQL database whose collation is a
language's (en_US.UTF-8, ICU en-US) does not, and the range then misses rows under the root (they
are re-read and never pruned) or takes in a sibling's (``out+old/`` sorts inside ``out/``..``out0``
in en-US: syncing ``out`` deleted them). Queries' path order becomes the same as SQLite's too.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Frozen copy of the view as of revision 0002 (a view depends on the column's type).
_VIEW = """
CREATE VIEW checkpoint_metrics_flat AS
SELECT c.id AS checkpoint_id, c.location, c.checkpoint_path, c.exp_name, c.architecture,
       c.encoder, c.epoch, c.global_step, c.training_phase, m.name AS metric, m.value
FROM checkpoints c JOIN checkpoint_metrics m ON m.checkpoint_id = c.id
WHERE c.checkpoint_exists
"""


def _collate(collation: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite's default collation (BINARY) is already bytewise
    op.execute("DROP VIEW checkpoint_metrics_flat")
    op.execute(
        f'ALTER TABLE checkpoints ALTER COLUMN checkpoint_path TYPE VARCHAR COLLATE "{collation}"'
    )
    op.execute(_VIEW)


def upgrade() -> None:
    _collate("C")


def downgrade() -> None:
    _collate("default")
