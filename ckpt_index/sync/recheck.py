"""Files read again only because they were new when last indexed: did their row change?

A file modified within the racy window of a sync is stored with no mtime, so the next sync reads
it again (its size and mtime could not prove it unchanged). That re-check is not an update: a
sync reports such a row as ``unchanged`` when what it reads gives the row it already had.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Engine, select

from ckpt_index.index.records import Record
from ckpt_index.index.tables import checkpoint_metrics, checkpoints, param_sets
from ckpt_index.sync.scan import Found

#: Columns that say when a file was read and what its mtime was, not what it says (and the
#: parameter set's id, compared by the set's digest).
_WHEN_READ = frozenset({"indexed_at", "ckpt_mtime_ns", "sidecar_mtime_ns", "param_set_id"})


def _is_recheck(row: Any, item: Found) -> bool:
    """Whether ``row`` was stored while a file of ``item`` was inside the racy window."""
    return (item.sidecar is not None and row.sidecar_mtime_ns is None) or (
        item.ckpt is not None and row.ckpt_mtime_ns is None
    )


def unchanged_rows(
    engine: Engine,
    records: Sequence[tuple[str, Record]],
    existing: Mapping[str, Any],
    found: Mapping[str, Found],
) -> set[str]:
    """Paths of ``records`` read again only for the racy window whose row would not change.

    ``existing``: the stored file-state rows by path; ``found``: the files listed, by path.
    """
    rechecked = [
        (existing[path].id, record)
        for path, record in records
        if path in existing and _is_recheck(existing[path], found[path])
    ]
    if not rechecked:
        return set()
    ids = [row_id for row_id, _ in rechecked]
    with engine.connect() as conn:
        stored = conn.execute(select(checkpoints).where(checkpoints.c.id.in_(ids)))
        rows = {row.id: row._mapping for row in stored}
        metrics: dict[int, dict[str, float]] = {row_id: {} for row_id in ids}
        table = checkpoint_metrics
        query = select(table.c.checkpoint_id, table.c.name, table.c.value)
        for row_id, name, value in conn.execute(query.where(table.c.checkpoint_id.in_(ids))):
            metrics[row_id][name] = value
        set_ids = {row["param_set_id"] for row in rows.values()} - {None}
        digests = dict(
            conn.execute(
                select(param_sets.c.id, param_sets.c.digest).where(param_sets.c.id.in_(set_ids))
            ).all()
        )
        conn.rollback()
    return {
        record.checkpoint_path
        for row_id, record in rechecked
        if row_id in rows
        and metrics[row_id] == record.metrics
        and digests.get(rows[row_id]["param_set_id"]) == record.with_digest().params_digest
        and _same_columns(rows[row_id], record)
    }


def _same_columns(stored: Any, record: Record) -> bool:
    return all(
        stored[name] == value for name, value in record.columns.items() if name not in _WHEN_READ
    )
