"""One checkpoint, one row: links are aliases of the file they point to.

- ``aliases``: JSON list of the absolute paths of the symbolic and hard links to the row's
  checkpoint (Lightning's ``save_last="link"``, UniqueModelCheckpoint's ``best-*`` links); NULL
  when there are none.
- ``is_last``: the row is a ``last*.ckpt`` whose bytes are those of another checkpoint beside it
  (a ``save_last=True`` copy); it loses ties to the checkpoint it copies.

Only columns are added. Existing rows whose ``checkpoint_path`` is a link stay until the next
sync of their root, which deletes them (a link is not a checkpoint) and lists their path in the
``aliases`` of their target's row; a dangling link's row is deleted and the link reported.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("checkpoints", sa.Column("aliases", sa.Text(), nullable=True))
    op.add_column("checkpoints", sa.Column("is_last", sa.Boolean(), nullable=True))


def downgrade() -> None:
    # Not indexed and no view uses them: plain DROP COLUMN on SQLite >= 3.35.
    op.drop_column("checkpoints", "is_last")
    op.drop_column("checkpoints", "aliases")
