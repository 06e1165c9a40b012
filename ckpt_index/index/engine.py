"""Opening the index: one resolution rule for the database, engines, and the schema under alembic.

The database is ``--db`` (a path or SQLAlchemy URL), else ``$CKPT_INDEX_DB``, else
``./ckpt_index.db``. Opening for writing creates a new database at head and upgrades an older one;
several processes may do so at once (the upgrade runs under an exclusive lock and re-checks the
revision). A database stamped with a revision this release does not know was written by a newer
release and is refused before anything is written.

alembic is imported only when a migration has to run, so opening an up-to-date index stays cheap.
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

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url

DEFAULT_DB = "ckpt_index.db"
ENV_VAR = "CKPT_INDEX_DB"
LOCATION_ENV_VAR = "CKPT_INDEX_LOCATION"
#: The newest alembic revision this release ships (a test checks it against migrations/).
HEAD_REVISION = "0005"
SQLITE_BUSY_TIMEOUT_S = 60.0
_MIGRATIONS = Path(__file__).parent / "migrations"


class IndexError_(Exception):
    """Base class for problems opening the index."""


class SchemaTooNewError(IndexError_):
    def __init__(self, url: str, found: str, head: str) -> None:
        super().__init__(
            f"the index {url} is at schema revision {found}, newer than this release's head "
            f"{head}; upgrade ckpt-index to use it (nothing was written)"
        )
        self.found = found
        self.head = head


class IndexMissingError(IndexError_):
    """No index where one was expected (a reading command creates none)."""


class IndexOutdatedError(IndexError_):
    """An index at an older revision, opened by a command that needs head and only reads."""

    def __init__(self, url: str, found: str, head: str) -> None:
        super().__init__(
            f"the index {url} is at schema revision {found}, older than this release's head "
            f"{head}; run `ckpt-index db upgrade` (with write access) first; reading commands "
            "never migrate (nothing was written)"
        )
        self.found = found
        self.head = head


class IndexChangedError(IndexError_):
    """A lock-free read (see :func:`_idle_wal_identity`) overlapped a write to the file."""


def resolve_db_url(db: str | os.PathLike[str] | None = None) -> str:
    """The SQLAlchemy URL for ``db``, ``$CKPT_INDEX_DB`` or ``./ckpt_index.db``."""
    value = os.fspath(db) if db is not None else os.environ.get(ENV_VAR) or DEFAULT_DB
    if "://" in value:
        return value
    return "sqlite:///" + str(Path(value).expanduser().absolute())


def resolve_location(location: str | None = None) -> str:
    """Where this process indexes from: ``location``, else ``$CKPT_INDEX_LOCATION``, else the host name.

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

    ``on_connect`` runs on each new SQLite DBAPI connection (e.g. to install an authorizer).
    """
    if not is_sqlite(url):
        engine = create_engine(url, pool_pre_ping=True)
        if readonly:
            engine = engine.execution_options(postgresql_readonly=True)
        return engine
    path = sqlite_file(url)
    snapshot = None
    if readonly:
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
    else:
        engine = create_engine(
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}
        )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:
        # We emit BEGIN ourselves (below): pysqlite's implicit transactions would defer locking and
        # commit around DDL, which breaks transactional migrations and invites SQLITE_BUSY upgrades.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        if readonly:
            cursor.execute("PRAGMA query_only = ON")
        elif path is not None:
            # journal_mode = WAL is not set here: it rewrites the file header, and a database from
            # a newer release must be refused untouched. _use_wal() sets it after the check.
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

    return engine


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


def current_revision(conn: Connection) -> str | None:
    """The alembic revision the database is stamped with; ``None`` for an empty database."""
    # has_table() rather than try/except: a failed SELECT would abort a PostgreSQL transaction.
    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def alembic_config(url: str, connection: Connection | None = None):
    """An alembic Config built in code, so an installed wheel needs no alembic.ini."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(_MIGRATIONS))
    return {rev.revision for rev in script.walk_revisions()}


def _lock_for_migration(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        # Serialise concurrent upgrades across processes and machines; released at commit.
        conn.execute(text("SELECT pg_advisory_xact_lock(724112001)"))


def _refuse_unknown(url: str, found: str | None) -> None:
    if found is not None and found != HEAD_REVISION and found not in known_revisions():
        raise SchemaTooNewError(url, found, HEAD_REVISION)


def _use_wal(engine: Engine, url: str) -> None:
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
        raw = conn.connection.driver_connection
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


def ensure_schema(engine: Engine, url: str) -> str:
    """Bring the database to head (creating it if empty); return the revision it is at."""
    with engine.connect() as conn:
        found = current_revision(conn)
        conn.rollback()
    _refuse_unknown(url, found)
    if found == HEAD_REVISION:
        _use_wal(engine, url)
        return found
    upgrade(engine, url, HEAD_REVISION)
    return HEAD_REVISION


def upgrade(engine: Engine, url: str, target: str = "head") -> None:
    from alembic import command

    with engine.connect() as conn:
        _refuse_unknown(url, current_revision(conn))
        conn.rollback()
    _use_wal(engine, url)
    with write_transaction(engine) as conn:
        _lock_for_migration(conn)
        found = current_revision(conn)  # another process may have migrated while we waited
        _refuse_unknown(url, found)
        if found != target:
            command.upgrade(alembic_config(url, conn), target)


def downgrade(engine: Engine, url: str, target: str) -> None:
    from alembic import command

    with write_transaction(engine) as conn:
        _lock_for_migration(conn)
        _refuse_unknown(url, current_revision(conn))
        command.downgrade(alembic_config(url, conn), target)


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
    newer release :class:`SchemaTooNewError`, and one at an older revision
    :class:`IndexOutdatedError` unless ``allow_older`` (raw SQL reads the tables as they are).
    """
    url = resolve_db_url(db)
    if not readonly and is_sqlite(url):
        path = sqlite_file(url)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_index_engine(url, readonly=readonly, on_connect=on_connect)
    try:
        if readonly:
            with engine.connect() as conn:
                found = current_revision(conn)
                conn.rollback()
            if found is None:
                raise IndexMissingError(
                    f"{url} holds no ckpt-index schema; run `ckpt-index sync` first"
                )
            if found != HEAD_REVISION:
                if found not in known_revisions():
                    raise SchemaTooNewError(url, found, HEAD_REVISION)
                if not allow_older:
                    raise IndexOutdatedError(url, found, HEAD_REVISION)
        else:
            ensure_schema(engine, url)
    except BaseException:
        engine.dispose()
        raise
    return engine
