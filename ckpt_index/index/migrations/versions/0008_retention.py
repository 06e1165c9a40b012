"""Retention: ``checkpoints.pinned`` and a covering index for the facet counts.

- ``pinned``: the sidecar says ``pinned: true`` (``ckpt-index pin``); ``ckpt-index gc`` never
  deletes a pinned checkpoint. NULL or false: not pinned. Existing rows get it at their next sync
  that reads their sidecar (``sync --full`` re-reads every file).
- ``ix_checkpoints_facets`` on (exp_name, architecture, encoder, training_phase, status, source,
  checkpoint_exists): the web page's facet counts group the matching rows by these fields; with
  the index they are one scan of a narrow index instead of the wide table.
- PostgreSQL only, ``ix_checkpoints_hmean_desc`` on (hmean DESC NULLS LAST, checkpoint_path): the
  default order of a page and of ``--sort hmean`` / ``--best-by hmean``. A plain index scanned
  backwards gives NULLs first, so without it PostgreSQL sorted the whole table for the first page
  (187 ms at 100,000 rows; 13 ms with it). SQLite needs none (it puts NULLs last in a descending
  scan) and cannot declare NULLS LAST in an index. The models leave it out; alembic's comparison
  skips it (``tables.include_object``).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

FACET_COLUMNS = [
    "exp_name",
    "architecture",
    "encoder",
    "training_phase",
    "status",
    "source",
    "checkpoint_exists",
]


def upgrade() -> None:
    op.add_column("checkpoints", sa.Column("pinned", sa.Boolean(), nullable=True))
    op.create_index("ix_checkpoints_facets", "checkpoints", FACET_COLUMNS)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE INDEX ix_checkpoints_hmean_desc "
            "ON checkpoints (hmean DESC NULLS LAST, checkpoint_path)"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_checkpoints_hmean_desc")
    op.drop_index("ix_checkpoints_facets", table_name="checkpoints")
    # Not indexed and no view uses it: plain DROP COLUMN on SQLite >= 3.35.
    op.drop_column("checkpoints", "pinned")
