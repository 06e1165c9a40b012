"""Trust: what loading a checkpoint would run, stale sidecars, directories a sync could not list.

- ``unsafe_globals``: JSON list of the pickle globals ``torch.load(weights_only=True)`` would
  refuse (``[]`` when none; NULL when the checkpoint's pickle was not read).
- ``stale``: the sidecar is older than the checkpoint beside it (the checkpoint was replaced after
  its sidecar was written).
- ``scan_error``: the row's directory could not be listed at the last sync, so the row was kept
  as it was rather than pruned; why.

Existing rows get their values at their next sync that reads them (``sync --full`` re-reads all).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("checkpoints", sa.Column("unsafe_globals", sa.Text(), nullable=True))
    op.add_column("checkpoints", sa.Column("stale", sa.Boolean(), nullable=True))
    op.add_column("checkpoints", sa.Column("scan_error", sa.Text(), nullable=True))


def downgrade() -> None:
    # Not indexed and no view uses them: plain DROP COLUMN on SQLite >= 3.35.
    op.drop_column("checkpoints", "scan_error")
    op.drop_column("checkpoints", "stale")
    op.drop_column("checkpoints", "unsafe_globals")
