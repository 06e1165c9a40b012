"""Writing records into the index: dialect-appropriate upserts keyed by checkpoint path.

These functions take a connection inside a write transaction (``engine.write_transaction``) and
never commit themselves, so a caller decides what is atomic: a sync commits batch by batch, the
training callback one checkpoint at a time.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, delete, insert, select

from ckpt_index.index.engine import resolve_location, write_transaction
from ckpt_index.index.records import Record
from ckpt_index.index.tables import (
    checkpoint_metrics,
    checkpoints,
    param_sets,
    param_values,
    wandb_run_cache,
)

if TYPE_CHECKING:  # each dialect is imported when its first upsert is built
    from sqlalchemy.dialects import postgresql, sqlite

_CHUNK = 500


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _upsert_statement(conn: Connection, columns: Iterable[str], overwrite: bool = True):
    return _build_upsert(conn.dialect.name, tuple(columns), overwrite)


@functools.lru_cache(maxsize=16)
def _build_upsert(dialect_name: str, columns: tuple[str, ...], overwrite: bool = True):
    # Cached: building the statement was half the cost of the callback's one-row upsert.
    stmt: postgresql.Insert | sqlite.Insert
    if dialect_name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as postgresql_insert

        stmt = postgresql_insert(checkpoints)
    elif dialect_name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt = sqlite_insert(checkpoints)
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported backends
        raise NotImplementedError(f"no upsert for {dialect_name}")
    keys = ("location", "checkpoint_path")
    returning = (checkpoints.c.id, checkpoints.c.checkpoint_path)
    if not overwrite:
        return stmt.on_conflict_do_nothing(index_elements=list(keys)).returning(*returning)
    updates = {name: stmt.excluded[name] for name in columns if name not in keys}
    # Returned rows are matched by path, so their order does not matter (asking for parameter
    # order makes SQLAlchemy send one INSERT per row on SQLite).
    return stmt.on_conflict_do_update(index_elements=list(keys), set_=updates).returning(
        checkpoints.c.id, checkpoints.c.checkpoint_path
    )


def upsert_records(
    conn: Connection,
    records: Sequence[Record],
    *,
    location: str | None = None,
    overwrite: bool = True,
) -> dict[str, int]:
    """Insert or replace the rows (and all metrics) of ``records``; return path -> row id.

    Rows are keyed by (location, checkpoint_path); ``location`` defaults to this machine's. With
    ``overwrite=False`` an existing row is left alone (and its path is not in the result).
    """
    if not records:
        return {}
    location = resolve_location(location)
    by_path = {record.checkpoint_path: record for record in records}  # last one wins
    # In path order, so that concurrent writers lock rows in the same order (no deadlocks).
    records = [by_path[path] for path in sorted(by_path)]
    # A row is replaced whole: a column a record does not set becomes NULL.
    keys = list(dict.fromkeys(k for r in records for k in r.columns))
    keys.append("param_set_id")
    set_ids = store_param_sets(conn, records)
    stmt = _upsert_statement(conn, ["location", *keys], overwrite)
    ids: dict[str, int] = {}
    params = [
        {
            **dict.fromkeys(keys),
            **r.columns,
            "location": location,
            "param_set_id": set_ids.get(r.params_digest) if r.params_digest else None,
        }
        for r in records
    ]
    for row_id, path in conn.execute(stmt, params):
        ids[path] = row_id
    id_list = list(ids.values())
    for chunk in _chunks(id_list):
        conn.execute(
            delete(checkpoint_metrics).where(checkpoint_metrics.c.checkpoint_id.in_(chunk))
        )
    metric_rows = [
        (ids[r.checkpoint_path], name, value)
        for r in records
        if r.checkpoint_path in ids
        for name, value in r.metrics.items()
    ]
    if metric_rows:
        # Plain driver executemany: SQLAlchemy's per-parameter processing of ~10 metrics per
        # checkpoint was a third of a cold sync's write time. The statement text is fixed.
        placeholder = "%s" if conn.dialect.paramstyle in ("format", "pyformat") else "?"
        sql = (
            f"INSERT INTO checkpoint_metrics (checkpoint_id, name, value) "
            f"VALUES ({placeholder}, {placeholder}, {placeholder})"
        )
        conn.exec_driver_sql(sql, metric_rows)
    return ids


def _placeholders(conn: Connection, count: int) -> str:
    mark = "%s" if conn.dialect.paramstyle in ("format", "pyformat") else "?"
    return ", ".join([mark] * count)


def store_param_sets(conn: Connection, records: Sequence[Record]) -> dict[str, int]:
    """The ``param_sets`` id of each parameter digest of ``records``, storing the new sets.

    A set is stored once per content: the checkpoints of a run share theirs, so a sync of a
    sweep writes a few hundred sets rather than a row per checkpoint and parameter. Concurrent
    writers of the same new set meet on the unique digest (the second one's insert does nothing).
    """
    wanted: dict[str, Record] = {}
    for record in records:
        if record.params and record.with_digest().params_digest not in wanted:
            wanted[record.params_digest] = record  # type: ignore[index]
    if not wanted:
        return {}
    ids = _set_ids(conn, list(wanted))
    new = [d for d in wanted if d not in ids]
    if new:
        conn.execute(
            _insert_ignore(conn, param_sets),
            [{"digest": d, "size": len(wanted[d].params)} for d in new],
        )
        created = _set_ids(conn, new)
        # Sets another writer created meanwhile already have their values.
        filled = _sets_with_values(conn, [created[d] for d in new if d in created])
        rows = [
            (created[d], *param)
            for d in new
            if d in created and created[d] not in filled
            for param in wanted[d].params.values()
        ]
        # In (name, set) order: the two (name, value) indexes then grow at a few places, not at
        # random (on SQLite, a third of the time for sets that differ).
        rows.sort(key=_name_then_set)
        if rows:
            conn.exec_driver_sql(
                "INSERT INTO param_values (param_set_id, name, value_type, numeric_value, "
                f"text_value, source, overridden) VALUES ({_placeholders(conn, 7)})",
                rows,
            )
        ids.update(created)
    return ids


def _set_ids(conn: Connection, digests: Sequence[str]) -> dict[str, int]:
    return {
        d: set_id
        for chunk in _chunks(digests)
        for set_id, d in conn.execute(
            select(param_sets.c.id, param_sets.c.digest).where(param_sets.c.digest.in_(chunk))
        )
    }


def _sets_with_values(conn: Connection, set_ids: Sequence[int]) -> set[int]:
    column = param_values.c.param_set_id
    return {
        set_id
        for chunk in _chunks(list(set_ids))
        for set_id in conn.scalars(select(column).where(column.in_(chunk)).distinct())
    }


def _name_then_set(row: tuple[Any, ...]) -> tuple[str, int]:
    return row[1], row[0]


def _insert_ignore(conn: Connection, table):
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert  # type: ignore[assignment]
    return dialect_insert(table).on_conflict_do_nothing(index_elements=["digest"])


def sweep_param_sets(conn: Connection, set_ids: Sequence[int] | None = None) -> int:
    """:func:`delete_unused_param_sets` in a savepoint: a set a concurrent writer has started to
    use (its uncommitted row holds the foreign key) is left for a later sweep, and the caller's
    transaction goes on."""
    from sqlalchemy.exc import DBAPIError

    if conn.dialect.name != "postgresql":  # one writer at a time: no race to lose
        return delete_unused_param_sets(conn, set_ids)
    try:
        with conn.begin_nested():
            return delete_unused_param_sets(conn, set_ids)
    except DBAPIError:
        return 0


def delete_unused_param_sets(conn: Connection, set_ids: Sequence[int] | None = None) -> int:
    """Delete parameter sets no checkpoint refers to (of ``set_ids``, or all); their values go
    with them (ON DELETE CASCADE). Returns how many were deleted.

    A set a concurrent writer has just given a new row is protected by the foreign key: on
    PostgreSQL the delete then fails, and the caller keeps the set (see :func:`sweep_param_sets`).
    """
    unused = ~select(checkpoints.c.id).where(checkpoints.c.param_set_id == param_sets.c.id).exists()
    if set_ids is None:
        stmt = delete(param_sets).where(unused)
        return conn.execute(stmt).rowcount or 0
    deleted = 0
    for chunk in _chunks(list(set_ids)):
        ids_chunk = delete(param_sets).where(param_sets.c.id.in_(chunk), unused)
        deleted += conn.execute(ids_chunk).rowcount or 0
    return deleted


def update_columns(conn: Connection, updates: Sequence[tuple[int, dict[str, Any]]]) -> None:
    """Update a few columns of existing rows by id (no metrics change)."""
    for row_id, values in updates:
        conn.execute(checkpoints.update().where(checkpoints.c.id == row_id).values(**values))


def delete_rows(conn: Connection, ids: Sequence[int]) -> None:
    """Delete rows by id; their metrics go with them (ON DELETE CASCADE, and explicitly), and
    their parameter sets when no other row uses them."""
    for chunk in _chunks(list(ids)):
        conn.execute(
            delete(checkpoint_metrics).where(checkpoint_metrics.c.checkpoint_id.in_(chunk))
        )
        set_ids = [
            set_id
            for set_id in conn.scalars(
                select(checkpoints.c.param_set_id)
                .where(checkpoints.c.id.in_(chunk), checkpoints.c.param_set_id.is_not(None))
                .distinct()
            )
        ]
        conn.execute(delete(checkpoints).where(checkpoints.c.id.in_(chunk)))
        if set_ids:
            sweep_param_sets(conn, set_ids)


def delete_paths(conn: Connection, paths: Sequence[str], *, location: str | None = None) -> int:
    """Delete this location's rows of these checkpoint paths; return how many there were."""
    location = resolve_location(location)
    c = checkpoints.c
    ids = [
        row_id
        for chunk in _chunks(list(paths))
        for row_id in conn.scalars(
            select(c.id).where(c.location == location, c.checkpoint_path.in_(chunk))
        )
    ]
    delete_rows(conn, ids)
    return len(ids)


def _set_aliases(conn: Connection, row_id: int, aliases: list[str]) -> None:
    value = json.dumps(sorted(aliases)) if aliases else None
    conn.execute(checkpoints.update().where(checkpoints.c.id == row_id).values(aliases=value))


def add_alias(conn: Connection, target: str, link: str, *, location: str | None = None) -> bool:
    """List ``link`` in the ``aliases`` of ``target``'s row and delete any row of ``link`` (a
    link is not a checkpoint); ``False`` when ``target`` has no row (the next sync adds it)."""
    location = resolve_location(location)
    c = checkpoints.c
    delete_paths(conn, [link], location=location)
    row = conn.execute(
        select(c.id, c.aliases).where(c.location == location, c.checkpoint_path == target)
    ).first()
    if row is None:
        return False
    aliases = json.loads(row.aliases) if row.aliases else []
    if link not in aliases:
        _set_aliases(conn, row.id, [*aliases, link])
    return True


def drop_aliases(conn: Connection, links: Sequence[str], *, location: str | None = None) -> None:
    """Remove ``links`` (removed files) from the ``aliases`` of this location's rows."""
    location = resolve_location(location)
    c = checkpoints.c
    for link in links:
        # contains() binds the path as a parameter (LIKE with its wildcards escaped).
        candidates = conn.execute(
            select(c.id, c.aliases).where(
                c.location == location, c.aliases.contains(json.dumps(link), autoescape=True)
            )
        ).all()
        for row_id, aliases in candidates:
            kept = [a for a in json.loads(aliases) if a != link]
            _set_aliases(conn, row_id, kept)


def move_row(
    conn: Connection,
    old: str,
    new: str,
    *,
    sidecar_path: str | None,
    location: str | None = None,
) -> bool:
    """Give the row of checkpoint ``old`` the path ``new`` (a renamed checkpoint keeps its row and
    metadata); ``False`` when ``old`` has no row.

    A row already at ``new`` (from a sync during an interrupted rename, or a stale one) is deleted
    first: it would collide with the moved row, which carries the sidecar's metadata.
    """
    location = resolve_location(location)
    c = checkpoints.c
    row_id = conn.scalar(select(c.id).where(c.location == location, c.checkpoint_path == old))
    if row_id is None:
        return False
    delete_paths(conn, [new], location=location)
    conn.execute(
        checkpoints.update()
        .where(c.id == row_id)
        .values(checkpoint_path=new, sidecar_path=sidecar_path)
    )
    return True


def path_range(root: str) -> tuple[str, str]:
    """Bounds ``lo <= path < hi`` of every path strictly below directory ``root``.

    A range on the unique index instead of ``LIKE 'root/%'``: no escaping of ``%`` and ``_``
    in user paths, and an index seek on every backend.
    """
    prefix = root.rstrip("/") + "/"
    return prefix, prefix[:-1] + chr(ord("/") + 1)


STATE_COLUMNS = (
    checkpoints.c.id,
    checkpoints.c.checkpoint_path,
    checkpoints.c.sidecar_path,
    checkpoints.c.status,
    checkpoints.c.checkpoint_exists,
    checkpoints.c.ckpt_size,
    checkpoints.c.ckpt_mtime_ns,
    checkpoints.c.sidecar_size,
    checkpoints.c.sidecar_mtime_ns,
    checkpoints.c.error,
    checkpoints.c.scan_error,
    checkpoints.c.unsafe_globals,
    checkpoints.c.aliases,
    checkpoints.c.is_last,
)


def rows_under(conn: Connection, root: str, *, location: str | None = None):
    """The file-state columns of this location's rows below ``root``."""
    lo, hi = path_range(root)
    stmt = select(*STATE_COLUMNS).where(
        checkpoints.c.location == resolve_location(location),
        checkpoints.c.checkpoint_path >= lo,
        checkpoints.c.checkpoint_path < hi,
    )
    return conn.execute(stmt)


# --------------------------------------------------------------------------------------------
# The W&B API cache (table ``wandb_run_cache``): answers of ``--wandb-online``, so that a run is
# fetched once, not per sync. Entries are mappings of the table's columns but ``run_path``.

_WANDB_CACHE_COLUMNS = ("fetched_at", "ok", "error", "config_json", "summary_json", "history_json")


def load_wandb_cache(conn: Connection, run_path: str) -> dict[str, Any] | None:
    """The cached W&B API answer for ``run_path`` (``entity/project/run_id``), or None."""
    table = wandb_run_cache
    row = conn.execute(select(table).where(table.c.run_path == run_path)).first()
    return None if row is None else {name: row._mapping[name] for name in _WANDB_CACHE_COLUMNS}


def store_wandb_cache(conn: Connection, run_path: str, entry: Mapping[str, Any]) -> None:
    """Replace the cached W&B API answer for ``run_path`` with ``entry``."""
    table = wandb_run_cache
    values = {name: entry.get(name) for name in _WANDB_CACHE_COLUMNS}
    conn.execute(delete(table).where(table.c.run_path == run_path))
    conn.execute(insert(table).values(run_path=run_path, **values))


class WandbApiCache:
    """The index as the cache of :func:`ckpt_index.sources.wandb.online.fetch_online`.

    Each ``get`` and ``put`` is its own short transaction. A ``put`` the index refuses (a
    read-only index or role) is dropped: the answer still serves, it is just not remembered.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def get(self, run_path: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            return load_wandb_cache(conn, run_path)

    def put(self, run_path: str, entry: Mapping[str, Any]) -> None:
        from sqlalchemy.exc import SQLAlchemyError

        try:
            with write_transaction(self.engine) as conn:
                store_wandb_cache(conn, run_path, entry)
        except SQLAlchemyError as exc:
            logging.getLogger("ckpt_index.wandb").debug(
                "could not cache the W&B answer for %s: %s", run_path, exc
            )
