"""The index's rows read around ckpt-index (plain SQL), and a library sync, for sync tests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

import ckpt_index.sync.roots as sync_module
from ckpt_index.index.engine import is_sqlite, open_engine, resolve_db_url

#: Columns that describe when/how a row was built rather than what it says.
NON_CONTENT = {"id", "indexed_at", "ckpt_size", "ckpt_mtime_ns", "sidecar_size", "sidecar_mtime_ns"}


def plain_engine(db: Path | str):
    """A plain engine on the index (a path or a URL), read around ckpt-index."""
    return create_engine(resolve_db_url(db), poolclass=NullPool)


def raw_rows(db: Path | str) -> dict[str, dict[str, Any]]:
    """Every column of every ``checkpoints`` row, keyed by checkpoint path, with its metrics."""
    engine = plain_engine(db)
    try:
        with engine.connect() as conn:
            rows = {
                r["checkpoint_path"]: dict(r)
                for r in conn.execute(text("SELECT * FROM checkpoints")).mappings()
            }
            for row in rows.values():
                row["metrics"] = {}
            for path, name, value in conn.execute(
                text(
                    "SELECT c.checkpoint_path, m.name, m.value FROM checkpoint_metrics m "
                    "JOIN checkpoints c ON c.id = m.checkpoint_id"
                )
            ):
                rows[path]["metrics"][name] = value
            dangling = conn.execute(
                text(
                    "SELECT count(*) FROM checkpoint_metrics WHERE checkpoint_id NOT IN "
                    "(SELECT id FROM checkpoints)"
                )
            ).scalar()
            assert dangling == 0, f"{dangling} metric rows point at no checkpoint"
    finally:
        engine.dispose()
    return rows


def wipe(db: Path | str) -> None:
    """Delete the index: its SQLite files, or every table and view of its PostgreSQL schema."""
    url = resolve_db_url(db)
    if is_sqlite(url):
        path = make_url(url).database
        for suffix in ("", "-wal", "-shm"):
            Path(path + suffix).unlink(missing_ok=True)
        return
    engine = plain_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("DROP VIEW checkpoint_metrics_flat"))
            for table in inspect(conn).get_table_names():
                conn.execute(text(f'DROP TABLE "{table}" CASCADE'))
    finally:
        engine.dispose()


def content(db: Path | str) -> dict[str, dict[str, Any]]:
    """Rows without the columns that depend on when and from which file state they were built."""
    return {
        path: {k: v for k, v in row.items() if k not in NON_CONTENT}
        for path, row in raw_rows(db).items()
    }


def row(db: Path | str, ckpt: Path) -> dict[str, Any]:
    rows = raw_rows(db)
    assert str(ckpt) in rows, f"no row for {ckpt}; rows: {sorted(rows)}"
    return rows[str(ckpt)]


def sync(roots, db: Path | str, **kwargs: Any) -> sync_module.SyncSummary:
    """One library sync without fallback inference: a checkpoint without a sidecar is indexed as
    ``missing`` (inference from the checkpoint and its run is tested on its own)."""
    engine = open_engine(db)
    try:
        roots = [roots] if isinstance(roots, (str, os.PathLike)) else roots
        return sync_module.sync_roots(engine, roots, infer=False, **kwargs)
    finally:
        engine.dispose()
