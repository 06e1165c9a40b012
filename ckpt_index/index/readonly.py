"""Read-only SQL over the index: ``ckpt-index sql`` and :func:`ckpt_index.connect`.

Three layers, so that no single oversight turns a query into a write: the SQLite file is opened
with ``mode=ro`` and ``PRAGMA query_only``; an authorizer refuses every action but reading (no
ATTACH, no PRAGMA writes, no DML hidden in a CTE); and one statement is run at a time. On
PostgreSQL the statement runs in a READ ONLY transaction, as a role that cannot write (checked).
Both backends stop a statement after a timeout, and rows are streamed in batches.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, text

from ckpt_index.index.engine import driver_connection, is_sqlite, open_engine, resolve_db_url

_ALLOWED_ACTIONS = {
    sqlite3.SQLITE_SELECT,
    sqlite3.SQLITE_READ,
    sqlite3.SQLITE_FUNCTION,
    sqlite3.SQLITE_RECURSIVE,
    sqlite3.SQLITE_TRANSACTION,  # BEGIN/COMMIT of the read transaction itself
}
#: Pragmas that only ever report (used by notebooks and pandas to inspect the schema).
_READ_PRAGMAS = {
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "database_list",
    "collation_list",
    "function_list",
    "compile_options",
}


class ReadOnlyError(Exception):
    """A statement that would write, or that failed; the message says which."""


def _authorize(action: int, arg1: str | None, arg2: str | None, _db, _source) -> int:
    if action in _ALLOWED_ACTIONS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() in _READ_PRAGMAS:
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def install_read_guard(dbapi_conn: Any) -> None:
    dbapi_conn.set_authorizer(_authorize)


def read_only_engine(db: str | os.PathLike[str] | None = None) -> Engine:
    """An engine that can only read the index, for notebooks: ``pandas.read_sql(sql, engine)``.

    It never writes: an index at an older revision is read as it is (``ckpt-index db upgrade``
    brings it to head).
    """
    url = resolve_db_url(db)
    guard = install_read_guard if is_sqlite(url) else None
    return open_engine(url, readonly=True, on_connect=guard, allow_older=True)


#: Default of ``ckpt-index sql --timeout``: an accidental endless query stops on its own.
DEFAULT_TIMEOUT_S = 30.0
#: Rows fetched per round trip; also the unit in which results are rendered.
BATCH_ROWS = 1000
#: Predefined PostgreSQL roles that read or run things on the server itself (COPY ... PROGRAM,
#: pg_read_file): as dangerous from a notebook as a superuser.
_SERVER_ROLES = ("pg_execute_server_program", "pg_write_server_files", "pg_read_server_files")


class WriteRoleError(ReadOnlyError):
    """``sql`` on PostgreSQL as a role that could write or reach the server (refused by default)."""


@dataclass
class SqlResult:
    """Column names and the rows, fetched lazily in batches (see :func:`stream_sql`)."""

    columns: list[str]
    batches: Iterator[list[tuple]]


def run_sql(
    engine: Engine,
    statement: str,
    *,
    timeout: float | None = DEFAULT_TIMEOUT_S,
    allow_write_role: bool = False,
) -> tuple[list[str], list[tuple]]:
    """Run one read-only statement; return (column names, rows). Writes raise ReadOnlyError.

    Holds every row: for large results use :func:`stream_sql`.
    """
    with stream_sql(
        engine, statement, timeout=timeout, allow_write_role=allow_write_role
    ) as result:
        return result.columns, [row for batch in result.batches for row in batch]


@contextmanager
def stream_sql(
    engine: Engine,
    statement: str,
    *,
    timeout: float | None = DEFAULT_TIMEOUT_S,
    allow_write_role: bool = False,
) -> Iterator[SqlResult]:
    """Run one read-only statement and yield its result, whose rows arrive in batches.

    ``timeout`` (seconds; ``None`` or 0 for none) bounds the statement, fetching included: SQLite
    aborts from a progress handler, PostgreSQL by ``statement_timeout``. Every failure, also one
    while iterating the batches, is a :class:`ReadOnlyError` with a one-line message.
    On PostgreSQL a role that is a superuser, belongs to a server-access role, or can write to the
    index's tables or schema is refused (:class:`WriteRoleError`) unless ``allow_write_role``:
    a READ ONLY transaction does not stop ``COPY ... TO PROGRAM`` or ``dblink_exec``.
    """
    if not statement.strip():
        raise ReadOnlyError("empty statement")
    timeout = timeout or None
    if engine.dialect.name == "postgresql":
        with _stream_postgresql(engine, statement, timeout, allow_write_role) as result:
            yield result
        return
    if _more_than_one_statement(statement):
        raise ReadOnlyError("only one statement may be run at a time")
    with engine.connect() as conn:
        raw = driver_connection(conn)
        deadline = None if timeout is None else time.monotonic() + timeout
        if deadline is not None:
            # Called every N virtual-machine steps; a non-zero answer interrupts the statement.
            raw.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)
        cursor = raw.cursor()
        try:
            try:
                cursor.execute(statement)
            except sqlite3.Error as exc:
                raise ReadOnlyError(_describe_sqlite(exc, timeout)) from None
            if cursor.description is None:
                raise ReadOnlyError("the statement returns no rows; only queries are allowed")
            columns = [column[0] for column in cursor.description]

            def batches() -> Iterator[list[tuple]]:
                while True:
                    try:
                        rows = cursor.fetchmany(BATCH_ROWS)
                    except sqlite3.Error as exc:
                        raise ReadOnlyError(_describe_sqlite(exc, timeout)) from None
                    if not rows:
                        return
                    yield rows

            yield SqlResult(columns, batches())
        finally:
            cursor.close()
            raw.set_progress_handler(None, 0)
            conn.rollback()


def _describe_sqlite(exc: sqlite3.Error, timeout: float | None) -> str:
    if "interrupted" in str(exc) and timeout is not None:
        return _timed_out(timeout)
    return _describe_message(str(exc))


def _timed_out(timeout: float) -> str:
    return (
        f"the statement was stopped after {timeout:g} s (--timeout SECONDS sets the limit, "
        "0 for none)"
    )


@contextmanager
def _stream_postgresql(
    engine: Engine, statement: str, timeout: float | None, allow_write_role: bool
) -> Iterator[SqlResult]:
    """One statement in the READ ONLY transaction, on the driver itself.

    Through SQLAlchemy, psycopg receives an empty parameter list: it then reads ``%`` as a
    placeholder (``LIKE 'a%'`` fails, ``'%s'`` becomes ``$1``) yet still sends the text with the
    simple protocol, which runs several statements: ``SELECT 1; COMMIT; DELETE ...`` ends the
    READ ONLY transaction and deletes. Without parameters, ``stream()`` sends the text as it is
    with the extended protocol, as one statement (PostgreSQL refuses a second one in it), and
    receives the rows in chunks instead of all at once.
    """
    with engine.connect() as conn:
        dbapi = conn.dialect.loaded_dbapi
        cursor = driver_connection(conn).cursor()
        try:
            try:
                if not allow_write_role:
                    _refuse_write_role(cursor)
                if timeout is not None:
                    # LOCAL: ends with the transaction, which is always rolled back.
                    cursor.execute(
                        "SELECT set_config('statement_timeout', %s, true)",
                        [f"{max(1, int(timeout * 1000))}ms"],
                    )
                rows = cursor.stream(statement, size=_chunk_size())
                first = next(rows, None)
            except dbapi.ProgrammingError as exc:
                if "didn't produce a result" in str(exc):  # SET, ANALYZE, LOCK, ...
                    raise ReadOnlyError(
                        "refused: the statement returns no rows; only queries are allowed"
                    ) from None
                raise ReadOnlyError(_describe_postgresql(exc, timeout)) from None
            except dbapi.Error as exc:
                raise ReadOnlyError(_describe_postgresql(exc, timeout)) from None
            if cursor.description is None:
                raise ReadOnlyError("the statement returns no rows; only queries are allowed")
            columns = [column.name for column in cursor.description]

            def batches() -> Iterator[list[tuple]]:
                batch = [] if first is None else [tuple(first)]
                try:
                    for row in rows:
                        batch.append(tuple(row))
                        if len(batch) >= BATCH_ROWS:
                            yield batch
                            batch = []
                except dbapi.Error as exc:
                    raise ReadOnlyError(_describe_postgresql(exc, timeout)) from None
                if batch:
                    yield batch

            yield SqlResult(columns, batches())
        finally:
            cursor.close()
            conn.rollback()


def _chunk_size() -> int:
    import psycopg

    return BATCH_ROWS if psycopg.capabilities.has_stream_chunked() else 1


def _describe_postgresql(exc: Exception, timeout: float | None) -> str:
    if getattr(exc, "sqlstate", None) == "57014" and timeout is not None:  # query_canceled
        return _timed_out(timeout)
    return _describe_message(str(exc))


_ROLE_CHECK = """
SELECT r.rolname, r.rolsuper, r.rolname = ANY(%s) AS server_access,
       coalesce(has_schema_privilege(r.oid, current_schema(), 'CREATE'), false) AS can_create,
       (SELECT string_agg(c.relname, ', ' ORDER BY c.relname) FROM pg_class c
         WHERE c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema())
           AND c.relkind IN ('r', 'p')
           AND has_table_privilege(r.oid, c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE')) AS writable
FROM pg_roles r
WHERE pg_has_role(current_user, r.oid, 'MEMBER')
ORDER BY r.rolname = current_user DESC, r.rolname
"""


def _refuse_write_role(cursor: Any) -> None:
    """Refuse a role that can write or reach the server, directly or through a role it may
    become (``SET ROLE`` inside the statement would need no more)."""
    cursor.execute(_ROLE_CHECK, [list(_SERVER_ROLES)])
    for name, superuser, server_access, can_create, writable in cursor.fetchall():
        if superuser:
            why = "is a superuser"
        elif server_access:
            why = "may read, write or run programs on the server"
        elif writable:
            why = f"can write to {writable}"
        elif can_create:
            why = "can create objects in the index's schema"
        else:
            continue
        via = "" if name == cursor.connection.info.user else f" through its role {name!r}"
        raise WriteRoleError(
            f"refused: the role {cursor.connection.info.user!r}{via} {why}; a READ ONLY "
            "transaction does not stop COPY ... TO PROGRAM or dblink_exec: connect as a "
            "read-only role (GRANT SELECT only), or pass --allow-write-role"
        )


def _more_than_one_statement(statement: str) -> bool:
    # sqlite3.complete_statement() tells whether a prefix ends a statement; any non-blank text
    # after the first complete prefix is a second statement.
    for end in range(len(statement)):
        if statement[end] == ";" and sqlite3.complete_statement(statement[: end + 1]):
            rest = statement[end + 1 :]
            return any(
                line.strip() and not line.strip().startswith("--") for line in rest.splitlines()
            )
    return False


def _describe_message(message: str) -> str:
    message = message.strip()
    if "multiple commands" in message:  # PostgreSQL, of a prepared statement
        return "refused: only one statement may be run at a time"
    refusals = (
        "not authorized",
        "authorization denied",
        "readonly",
        "read-only",
        "cannot VACUUM",  # VACUUM always writes; it fails on our BEGIN first
        "cannot run inside a transaction block",
    )  # PostgreSQL's VACUUM and friends
    if any(text in message for text in refusals):
        return f"refused: the index is read-only here ({message.splitlines()[0]})"
    return message


__all__ = [
    "ReadOnlyError",
    "SqlResult",
    "WriteRoleError",
    "read_only_engine",
    "run_sql",
    "stream_sql",
    "text",
]
