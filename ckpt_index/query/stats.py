"""``ckpt-index stats``: what the index holds."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, func, select
from sqlalchemy.sql import ColumnElement

from ckpt_index.index.migrate import current_revision
from ckpt_index.index.tables import checkpoint_metrics, checkpoints


def index_stats(conn: Connection) -> dict[str, Any]:
    """Counts by status, orphaned sidecars, experiments, metric names, the best hmean (never of
    an unreadable checkpoint, as in queries) and the most frequent architectures and encoders."""
    c = checkpoints.c
    total = conn.scalar(select(func.count()).select_from(checkpoints))
    by_status: dict[str, int] = {
        status: n for status, n in conn.execute(select(c.status, func.count()).group_by(c.status))
    }
    orphaned = conn.scalar(select(func.count()).where(c.checkpoint_exists.is_(False)))

    def top(column: ColumnElement[Any]) -> dict[str, int]:
        """The ten most frequent values of ``column`` among existing checkpoints."""
        rows = conn.execute(
            select(column, func.count().label("n"))
            .where(c.checkpoint_exists.is_(True), column.is_not(None))
            .group_by(column)
            .order_by(func.count().desc(), column)
            .limit(10)
        )
        return {name: n for name, n in rows}

    return {
        "revision": current_revision(conn),
        "checkpoints": total,
        "valid": by_status.get("valid", 0),
        "invalid": by_status.get("invalid", 0),
        "inferred": by_status.get("inferred", 0),
        "unreadable": by_status.get("unreadable", 0),
        "missing": by_status.get("missing", 0),  # the status name, as sync reports it
        "orphaned_sidecars": orphaned,
        "experiments": conn.scalar(select(func.count(c.exp_name.distinct()))),
        "metric_names": conn.scalar(select(func.count(checkpoint_metrics.c.name.distinct()))),
        # As in queries, an unreadable checkpoint is never the best one.
        "best_hmean": conn.scalar(
            select(func.max(c.hmean)).where(c.checkpoint_exists.is_(True), c.status != "unreadable")
        ),
        "architectures": top(c.architecture),
        "encoders": top(c.encoder),
    }
