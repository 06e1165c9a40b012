"""Opening the index: one resolution rule for the database, the engines, and writes that retry.

The database is ``--db`` (a path or SQLAlchemy URL), else ``$CKPT_INDEX_DB``, else
``./ckpt_index.db``; the location rows are indexed under is ``--location``, else
``$CKPT_INDEX_LOCATION``, else the host name. Every engine on the index is made here with the
settings its connections need (:func:`create_index_engine`); :func:`open_engine` also checks or
brings the schema to this release's head through :mod:`ckpt_index.index.migrate`, which owns the
schema's revision. Writes run in :func:`write_transaction`, and :func:`run_write` retries one that
lost a race with another writer.
"""

from __future__ import annotations

import os
import random
import socket
import sqlite3
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url

DEFAULT_DB = "ckpt_index.db"
ENV_VAR = "CKPT_INDEX_DB"
LOCATION_ENV_VAR = "CKPT_INDEX_LOCATION"
SQLITE_BUSY_TIMEOUT_S = 60.0


class IndexError_(Exception):
    """Base class for problems opening the index."""


class IndexMissingError(IndexError_):
    """No index where one was expected (a reading command creates none)."""


class IndexChangedError(IndexError_):
    """A lock-free read (see :func:`_idle_wal_identity`) overlapped a write to the file."""


def resolve_db_url(db: str | os.PathLike[str] | None = None) -> str:
    """The SQLAlchemy URL for ``db``, ``$CKPT_INDEX_DB`` or ``./ckpt_index.db``."""
    value = os.fspath(db) if db is not None else os.environ.get(ENV_VAR) or DEFAULT_DB
    if "://" in value:
        return value
    return "sqlite:///" + str(Path(value).expanduser().absolute())


def resolve_location(location: str | None = None) -> str:
    """Where this process indexes from: ``location``, else ``$CKPT_INDEX_LOCATION``, else the host.

    A checkpoint's identity in the index is (location, path): two machines may both have
    ``/data/outputs/...`` and a shared index keeps both. Name a filesystem every node mounts at the
    same path (``CKPT_INDEX_LOCATION=shared-nfs``) to have all nodes share its rows.
    """
    return location or os.environ.get(LOCATION_ENV_VAR) or socket.gethostname() or "localhost"


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def sqlite_file(url: str) -> str | None:
    database = make_url(url).database
    return None if database in (None, "", ":memory:") else database


def create_index_engine(
    url: str, *, readonly: bool = False, on_connect: Callable[[Any], None] | None = None
) -> Engine:
    """An engine with the settings every connection to the index needs.

    A read-only engine never writes: on PostgreSQL its transactions are READ ONLY; a SQLite file is
    opened with ``mode=ro`` (and must exist: :class:`IndexMissingError`), without locks when no
    writer has it open (see :func:`_idle_wal_identity`). ``on_connect`` runs on each new SQLite
    DBAPI connection (e.g. to install an authorizer).
    """
    if not is_sqlite(url):
        engine = create_engine(url, pool_pre_ping=True)
        return engine.execution_options(postgresql_readonly=True) if readonly else engine
    path = sqlite_file(url)
    if readonly:
        engine = _readonly_sqlite_engine(path, url)
    else:
        engine = create_engine(
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}
        )
    _configure_sqlite(engine, readonly=readonly, on_file=path is not None, on_connect=on_connect)
    return engine


def _readonly_sqlite_engine(path: str | None, url: str) -> Engine:
    """An engine reading the SQLite file at ``path`` (``mode=ro``), lock-free when it is idle."""
    if path is None or not Path(path).is_file():
        raise IndexMissingError(f"no index at {path or url}; run `ckpt-index sync ROOT` first")
    uri = Path(path).absolute().as_uri() + "?mode=ro"
    snapshot = _idle_wal_identity(path)
    if snapshot is not None:
        uri += "&immutable=1"
    engine = create_engine(
        "sqlite://",
        creator=lambda: sqlite3.connect(
            uri, uri=True, timeout=SQLITE_BUSY_TIMEOUT_S, check_same_thread=False
        ),
    )
    if snapshot is not None:
        _UNLOCKED_READS[engine] = (path, snapshot)
    return engine


def _configure_sqlite(
    engine: Engine,
    *,
    readonly: bool,
    on_file: bool,
    on_connect: Callable[[Any], None] | None,
) -> None:
    """Install the per-connection settings and the explicit BEGIN on a SQLite engine."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # We emit BEGIN ourselves (below): pysqlite's implicit transactions would defer locking and
        # commit around DDL, which breaks transactional migrations and invites SQLITE_BUSY upgrades.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        if readonly:
            cursor.execute("PRAGMA query_only = ON")
        elif on_file:
            # journal_mode = WAL is not set here: it rewrites the file header, and a database from
            # a newer release must be refused untouched. use_wal() sets it after the check.
            cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        # LIKE is case-sensitive on PostgreSQL; the same here keeps --exp globs and --where
        # patterns meaning one thing on both backends (and globs behave like the shell's).
        cursor.execute("PRAGMA case_sensitive_like = ON")
        cursor.close()
        if on_connect is not None:
            on_connect(dbapi_conn)

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # A writer takes the write lock up front (BEGIN IMMEDIATE) so it waits on the busy timeout
        # instead of failing when a read transaction would have to be upgraded.
        immediate = conn.get_execution_options().get("ckpt_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def driver_connection(conn: Connection) -> Any:
    """The DBAPI connection under ``conn`` (sqlite3's or psycopg's), for what SQLAlchemy lacks."""
    raw = conn.connection.driver_connection
    if raw is None:  # only after the connection was invalidated
        raise RuntimeError("the database connection was closed")
    return raw


#: Engines reading without locks (immutable), with the file's identity when they were made.
_UNLOCKED_READS: weakref.WeakKeyDictionary[Engine, tuple[str, tuple[int, int, int]]] = (
    weakref.WeakKeyDictionary()
)


def _file_identity(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns


def _idle_wal_identity(path: str) -> tuple[int, int, int] | None:
    """The file's identity if it is a WAL database no writer has open (no ``-wal`` file).

    A ``mode=ro`` reader of such a file creates ``-wal`` and ``-shm``, owned by its uid with the
    database's mode, and cannot remove them at close (that needs a write lock). Left by another
    user they block the owner's next sync ("attempt to write a readonly database"); SQLite hands
    them to the owner only when the reader is root. So a reader of an idle WAL database reads
    the file without locks (``immutable``) and creates nothing: with no ``-wal``, the last
    writer checkpointed every transaction into the file. A sync that starts meanwhile writes to
    its WAL first and only checkpoints into the file later; :func:`check_unlocked_read` compares
    the file's identity after the read and refuses a read that overlapped such a checkpoint.
    """
    try:
        if os.path.exists(path + "-wal"):
            return None
        with open(path, "rb") as handle:
            header = handle.read(20)
            st = os.fstat(handle.fileno())
    except OSError:
        return None
    if len(header) < 20 or header[18:20] != b"\x02\x02":  # read/write versions 2: WAL mode
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def check_unlocked_read(engine: Engine) -> None:
    """Raise :class:`IndexChangedError` if a lock-free read may have seen a write half-done."""
    entry = _UNLOCKED_READS.get(engine)
    if entry is None:
        return
    path, before = entry
    try:
        after = _file_identity(path)
    except OSError:
        after = None
    if after != before:
        raise IndexChangedError(
            f"the index {path} was written while it was read (an idle index is read without "
            "locks, so that reading leaves no files behind); run the command again"
        )


@contextmanager
def disposing(engine: Engine) -> Iterator[Engine]:
    """``with disposing(open_engine(db)) as engine:`` closes the engine's pooled connections on
    the way out, error or not: an open SQLite connection keeps its file (and WAL) in use."""
    try:
        yield engine
    finally:
        engine.dispose()


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A connection in a write transaction, committed on success and rolled back on error."""
    with engine.connect() as conn:
        conn = conn.execution_options(ckpt_write=True)
        with conn.begin():
            yield conn


T = TypeVar("T")
#: How often a write that lost a race (SQLite lock, PostgreSQL deadlock) is tried again.
WRITE_ATTEMPTS = 6


def is_transient(exc: BaseException) -> bool:
    """A write that may succeed if tried again: SQLite busy/locked, PostgreSQL deadlock or
    serialization failure (two writers upserting overlapping rows)."""
    from sqlalchemy.exc import DBAPIError

    if not isinstance(exc, DBAPIError):
        return False
    orig = exc.orig
    if getattr(orig, "sqlite_errorname", "") in ("SQLITE_BUSY", "SQLITE_LOCKED"):
        return True
    if "database is locked" in str(orig) or "database table is locked" in str(orig):
        return True
    return getattr(orig, "sqlstate", None) in ("40001", "40P01")


def run_write(
    engine: Engine, work: Callable[[Connection], T], *, attempts: int = WRITE_ATTEMPTS
) -> T:
    """Run ``work(conn)`` in one write transaction; retry it whole when it lost a race.

    SQLite waits on its busy timeout first, so a retry only follows a lock held longer than that
    or a BUSY that SQLite does not wait for; PostgreSQL aborts one of two deadlocked writers.
    The transaction is rolled back before each retry, so ``work`` starts from a clean slate.
    """
    for attempt in range(attempts):
        try:
            with write_transaction(engine) as conn:
                return work(conn)
        except Exception as exc:
            if attempt == attempts - 1 or not is_transient(exc):
                raise
            time.sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


def use_wal(engine: Engine, url: str) -> None:
    """Put a SQLite file in WAL mode (a property of the file), once it is known to be ours.

    Switching the journal mode needs an exclusive lock, and SQLite may answer "database is
    locked" at once instead of waiting on the busy timeout while other processes open the file
    too: the switch is retried for as long as the busy timeout would have waited.
    """
    if not is_sqlite(url) or sqlite_file(url) is None:
        return
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    with engine.connect() as conn:
        # On the DBAPI connection, outside any transaction (the pragma is refused inside one).
        raw = driver_connection(conn)
        while True:
            try:
                if raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                    return
                raw.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02 + 0.05 * random.random())


def open_engine(
    db: str | os.PathLike[str] | None = None,
    *,
    readonly: bool = False,
    on_connect: Callable[[Any], None] | None = None,
    allow_older: bool = False,
) -> Engine:
    """An engine on the index: created or upgraded to head when writable, only checked when
    read-only.

    A read-only open never writes: a missing index raises :class:`IndexMissingError`, one from a
    newer release :class:`~ckpt_index.index.migrate.SchemaTooNewError`, and one at an older
    revision :class:`~ckpt_index.index.migrate.IndexOutdatedError` unless ``allow_older`` (raw SQL
    reads the tables as they are).
    """
    # Imported here: migrate works through this module's engines and transactions, and
    # open_engine is the one place that joins the two.
    from ckpt_index.index import migrate

    url = resolve_db_url(db)
    if not readonly and is_sqlite(url):
        path = sqlite_file(url)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_index_engine(url, readonly=readonly, on_connect=on_connect)
    try:
        if readonly:
            migrate.check_readable(engine, url, allow_older=allow_older)
        else:
            migrate.ensure_schema(engine, url)
    except BaseException:
        engine.dispose()
        raise
    return engine
