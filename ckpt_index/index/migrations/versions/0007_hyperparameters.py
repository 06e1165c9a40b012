"""Hyperparameters: ``param_sets``, ``param_values``, ``checkpoints.param_set_id`` and two views.

- ``param_sets``: one row per distinct set of hyperparameters (by content digest); checkpoints
  with the same parameters (every checkpoint of a run) share it.
- ``param_values``: the set's parameters by flattened dotted name, with ``numeric_value`` (numbers)
  and ``text_value`` (every value's text), indexed on (name, numeric_value) and (name, text_value)
  for equality and range filters on a named parameter.
- ``checkpoints.param_set_id``: the row's set (NULL: no parameters known).
- View ``checkpoint_params`` (checkpoint_id, name, value_type, numeric_value, text_value, source,
  overridden): every checkpoint's parameters, one row per (checkpoint, name).
- On PostgreSQL, multivariate statistics on (name, numeric_value) and (name, text_value), so
  that the planner knows how many values a filter on one parameter selects.
- View ``checkpoint_params_flat``: the same for existing checkpoints, with their path, experiment,
  model and epoch, for notebooks (like ``checkpoint_metrics_flat``).

Existing rows get their parameters at their next sync that reads them (``sync --full`` re-reads
every file).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# Frozen copies of the views as of this revision.
PARAMS_VIEW = """
CREATE VIEW checkpoint_params AS
SELECT c.id AS checkpoint_id, p.name, p.value_type, p.numeric_value, p.text_value, p.source,
       p.overridden
FROM checkpoints c JOIN param_values p ON p.param_set_id = c.param_set_id
"""

PARAMS_FLAT_VIEW = """
CREATE VIEW checkpoint_params_flat AS
SELECT c.id AS checkpoint_id, c.location, c.checkpoint_path, c.exp_name, c.architecture,
       c.encoder, c.epoch, c.global_step, c.training_phase, p.name AS param, p.value_type,
       p.numeric_value, p.text_value, p.source, p.overridden
FROM checkpoints c JOIN param_values p ON p.param_set_id = c.param_set_id
WHERE c.checkpoint_exists
"""


def upgrade() -> None:
    op.create_table(
        "param_sets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_param_sets")),
    )
    op.create_index("ux_param_sets_digest", "param_sets", ["digest"], unique=True)
    op.create_table(
        "param_values",
        sa.Column("param_set_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("value_type", sa.String(), nullable=False),
        sa.Column("numeric_value", sa.Float(), nullable=True),
        sa.Column(
            "text_value",
            sa.Text().with_variant(sa.Text(collation="C"), "postgresql"),
            nullable=True,
        ),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("overridden", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["param_set_id"],
            ["param_sets.id"],
            name=op.f("fk_param_values_param_set_id_param_sets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("param_set_id", "name", name=op.f("pk_param_values")),
    )
    op.create_index(
        "ix_param_values_name_numeric_value",
        "param_values",
        ["name", "numeric_value", "param_set_id"],
    )
    op.create_index(
        "ix_param_values_name_text_value", "param_values", ["name", "text_value", "param_set_id"]
    )
    if op.get_bind().dialect.name == "sqlite":
        # SQLite adds a column with a REFERENCES clause in place (ALTER TABLE ADD CONSTRAINT does
        # not exist there, and a batch rebuild of checkpoints would cascade-delete its metrics).
        op.execute(
            "ALTER TABLE checkpoints ADD COLUMN param_set_id INTEGER REFERENCES param_sets (id)"
        )
    else:
        op.add_column("checkpoints", sa.Column("param_set_id", sa.Integer(), nullable=True))
        op.create_foreign_key(
            op.f("fk_checkpoints_param_set_id_param_sets"),
            "checkpoints",
            "param_sets",
            ["param_set_id"],
            ["id"],
        )
        # PostgreSQL estimates "name = :n AND numeric_value < :v" as the product of the two
        # columns' selectivities, which for one name among 150 is off by 100x (31 rows estimated,
        # 4,960 found), and then plans a parameter filter with --best-by as a fetch and sort of
        # every match (38 ms at 100,000 checkpoints instead of 2 ms). Multivariate MCV lists on
        # (name, value) give ANALYZE the real frequencies.
        for column in ("numeric_value", "text_value"):
            name = f"st_param_values_name_{column}"
            op.execute(f"CREATE STATISTICS {name} (mcv) ON name, {column} FROM param_values")
            op.execute(f"ALTER STATISTICS {name} SET STATISTICS 1000")
    op.create_index("ix_checkpoints_param_set_id", "checkpoints", ["param_set_id"])
    op.execute(PARAMS_VIEW)
    op.execute(PARAMS_FLAT_VIEW)


def downgrade() -> None:
    op.execute("DROP VIEW checkpoint_params_flat")
    op.execute("DROP VIEW checkpoint_params")
    op.drop_index("ix_checkpoints_param_set_id", table_name="checkpoints")
    if op.get_bind().dialect.name != "sqlite":
        op.drop_constraint(
            op.f("fk_checkpoints_param_set_id_param_sets"), "checkpoints", type_="foreignkey"
        )
    # SQLite >= 3.35 drops a column that no index or view uses; its REFERENCES clause goes with it.
    op.drop_column("checkpoints", "param_set_id")
    op.drop_index("ix_param_values_name_text_value", table_name="param_values")
    op.drop_index("ix_param_values_name_numeric_value", table_name="param_values")
    op.drop_table("param_values")
    op.drop_index("ux_param_sets_digest", table_name="param_sets")
    op.drop_table("param_sets")
