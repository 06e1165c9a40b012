"""Read-only SQL over the index: ``ckpt-index sql`` and :func:`ckpt_index.connect`.

Three layers, so that no single oversight turns a query into a write: the SQLite file is opened
with ``mode=ro`` and ``PRAGMA query_only``; an authorizer refuses every action but reading (no
ATTACH, no PRAGMA writes, no DML hidden in a CTE); and one statement is run at a time. On
PostgreSQL the statement runs in a READ ONLY transaction.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from ckpt_index.db import is_sqlite, open_engine, resolve_db_url

_ALLOWED_ACTIONS = {
    sqlite3.SQLITE_SELECT,
    sqlite3.SQLITE_READ,
    sqlite3.SQLITE_FUNCTION,
    sqlite3.SQLITE_RECURSIVE,
    sqlite3.SQLITE_TRANSACTION,  # BEGIN/COMMIT of the read transaction itself
}
#: Pragmas that only ever report (used by notebooks and pandas to inspect the schema).
_READ_PRAGMAS = {
    "table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo",
    "foreign_key_list", "database_list", "collation_list", "function_list", "compile_options",
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
    """An engine that can only read the index, for notebooks: ``pandas.read_sql(sql, engine)``."""
    url = resolve_db_url(db)
    guard = install_read_guard if is_sqlite(url) else None
    return open_engine(url, readonly=True, on_connect=guard)


def run_sql(engine: Engine, statement: str) -> tuple[list[str], list[tuple]]:
    """Run one read-only statement; return (column names, rows). Writes raise ReadOnlyError."""
    if not statement.strip():
        raise ReadOnlyError("empty statement")
    if engine.dialect.name == "sqlite" and _more_than_one_statement(statement):
        raise ReadOnlyError("only one statement may be run at a time")
    if engine.dialect.name == "postgresql":
        return _run_sql_postgresql(engine, statement)
    try:
        with engine.connect() as conn:
            result = conn.exec_driver_sql(statement)
            if not result.returns_rows:
                raise ReadOnlyError("the statement returns no rows; only queries are allowed")
            columns = list(result.keys())
            rows = [tuple(row) for row in result]
            conn.rollback()
    except DBAPIError as exc:
        raise ReadOnlyError(_describe(exc)) from None
    return columns, rows


def _run_sql_postgresql(engine: Engine, statement: str) -> tuple[list[str], list[tuple]]:
    """One statement in the READ ONLY transaction, on the driver itself.

    Through SQLAlchemy, psycopg receives an empty parameter list: it then reads ``%`` as a
    placeholder (``LIKE 'a%'`` fails, ``'%s'`` becomes ``$1``) yet still sends the text with the
    simple protocol, which runs several statements: ``SELECT 1; COMMIT; DELETE ...`` ends the
    READ ONLY transaction and deletes. Without parameters and with ``prepare=True`` the text is
    sent as it is, as one prepared statement, and PostgreSQL refuses a second one in it.
    """
    with engine.connect() as conn:
        dbapi = conn.dialect.dbapi
        cursor = conn.connection.driver_connection.cursor()
        try:
            cursor.execute(statement, prepare=True)
            if cursor.description is None:
                raise ReadOnlyError("the statement returns no rows; only queries are allowed")
            columns = [column.name for column in cursor.description]
            rows = [tuple(row) for row in cursor.fetchall()]
        except dbapi.Error as exc:
            raise ReadOnlyError(_describe_message(str(exc))) from None
        finally:
            cursor.close()
            conn.rollback()
    return columns, rows


def _more_than_one_statement(statement: str) -> bool:
    # sqlite3.complete_statement() tells whether a prefix ends a statement; any non-blank text
    # after the first complete prefix is a second statement.
    for end in range(len(statement)):
        if statement[end] == ";" and sqlite3.complete_statement(statement[: end + 1]):
            rest = statement[end + 1 :]
            return any(line.strip() and not line.strip().startswith("--") for line in rest.splitlines())
    return False


def _describe(exc: DBAPIError) -> str:
    return _describe_message(str(exc.orig) if exc.orig is not None else str(exc))


def _describe_message(message: str) -> str:
    message = message.strip()
    if "multiple commands" in message:  # PostgreSQL, of a prepared statement
        return "refused: only one statement may be run at a time"
    refusals = ("not authorized", "authorization denied", "readonly", "read-only",
                "cannot VACUUM",  # VACUUM always writes; it fails on our BEGIN first
                "cannot run inside a transaction block")  # PostgreSQL's VACUUM and friends
    if any(text in message for text in refusals):
        return f"refused: the index is read-only here ({message.splitlines()[0]})"
    return message


__all__ = ["ReadOnlyError", "read_only_engine", "run_sql", "text"]
