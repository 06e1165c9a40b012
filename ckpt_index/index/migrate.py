"""The index schema's revision, under alembic: one place that knows it, checks it and moves it.

In the spirit of optuna's ``_VersionManager``, this module answers every question about the
schema's version: which revision this release ships (:data:`HEAD_REVISION`) and knows
(:func:`known_revisions`), which one a database is at (:func:`current_revision`), whether a
database may be used as it is (:func:`check_readable`), and bringing it to a revision
(:func:`ensure_schema`, :func:`upgrade`, :func:`downgrade`). The rules:

- A database stamped with a revision this release does not know was written by a newer release:
  it is refused (:class:`SchemaTooNewError`) before anything is written to it.
- Opening for writing creates a new database at head and upgrades an older one. Several processes
  may do so at once: the upgrade runs in a write transaction under an exclusive lock and re-checks
  the revision once it holds the lock.
- Reading never migrates: a reader of an older database gets :class:`IndexOutdatedError` (unless
  it reads the tables as they are, as raw SQL does).

alembic is imported only when a migration has to run, so opening an up-to-date index stays cheap.
:mod:`ckpt_index.index.engine` builds the engines and transactions this module works through.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, inspect, text

from ckpt_index.index.engine import IndexError_, IndexMissingError, use_wal, write_transaction

if TYPE_CHECKING:
    from alembic.config import Config

#: The newest alembic revision this release ships (a test checks it against migrations/).
HEAD_REVISION = "0008"
#: The alembic script directory, shipped inside the package (an installed wheel has no alembic.ini).
MIGRATIONS_DIR = Path(__file__).parent / "migrations"
#: Serialises concurrent PostgreSQL upgrades across processes and machines (any fixed number).
_PG_MIGRATION_LOCK = 724112001


class SchemaTooNewError(IndexError_):
    """A database at a revision this release does not know: a newer release wrote it."""

    def __init__(self, url: str, found: str, head: str) -> None:
        super().__init__(
            f"the index {url} is at schema revision {found}, newer than this release's head "
            f"{head}; upgrade ckpt-index to use it (nothing was written)"
        )
        self.found = found
        self.head = head


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


def current_revision(conn: Connection) -> str | None:
    """The alembic revision the database is stamped with; ``None`` for an empty database."""
    # has_table() rather than try/except: a failed SELECT would abort a PostgreSQL transaction.
    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def known_revisions() -> set[str]:
    """Every revision this release ships, head included."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(MIGRATIONS_DIR))
    return {rev.revision for rev in script.walk_revisions()}


def alembic_config(url: str, connection: Connection | None = None) -> Config:
    """An alembic Config built in code, so an installed wheel needs no alembic.ini.

    With ``connection``, the migration environment runs on it (inside the caller's transaction).
    """
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def refuse_unknown(url: str, found: str | None) -> None:
    """Raise :class:`SchemaTooNewError` if ``found`` is a revision this release does not ship."""
    if found is not None and found != HEAD_REVISION and found not in known_revisions():
        raise SchemaTooNewError(url, found, HEAD_REVISION)


def _revision_of(engine: Engine) -> str | None:
    """The database's revision, read in a transaction that is ended at once."""
    with engine.connect() as conn:
        found = current_revision(conn)
        conn.rollback()
    return found


def check_readable(engine: Engine, url: str, *, allow_older: bool = False) -> None:
    """Refuse, without writing, a database a reader cannot use as it is.

    Raises :class:`IndexMissingError` for a database with no schema, :class:`SchemaTooNewError`
    for one from a newer release, and :class:`IndexOutdatedError` for one at an older revision
    unless ``allow_older``.
    """
    found = _revision_of(engine)
    if found is None:
        raise IndexMissingError(f"{url} holds no ckpt-index schema; run `ckpt-index sync` first")
    if found == HEAD_REVISION:
        return
    refuse_unknown(url, found)
    if not allow_older:
        raise IndexOutdatedError(url, found, HEAD_REVISION)


def ensure_schema(engine: Engine, url: str) -> str:
    """Bring the database to head (creating it if empty); return the revision it is at."""
    found = _revision_of(engine)
    refuse_unknown(url, found)
    if found == HEAD_REVISION:
        use_wal(engine, url)
        return found
    upgrade(engine, url, HEAD_REVISION)
    return HEAD_REVISION


def _lock_for_migration(conn: Connection) -> None:
    """Hold the migration lock until the transaction ends.

    SQLite needs nothing more: a write transaction (``BEGIN IMMEDIATE``) already excludes every
    other writer. PostgreSQL takes a transaction-level advisory lock, released at commit.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})"))


def upgrade(engine: Engine, url: str, target: str = "head") -> None:
    """Upgrade the database to ``target``; a database from a newer release is refused first."""
    from alembic import command

    refuse_unknown(url, _revision_of(engine))
    use_wal(engine, url)
    with write_transaction(engine) as conn:
        _lock_for_migration(conn)
        found = current_revision(conn)  # another process may have migrated while we waited
        refuse_unknown(url, found)
        if found != target:
            command.upgrade(alembic_config(url, conn), target)


def downgrade(engine: Engine, url: str, target: str) -> None:
    """Downgrade the database to ``target`` (``"base"`` drops every table)."""
    from alembic import command

    with write_transaction(engine) as conn:
        _lock_for_migration(conn)
        refuse_unknown(url, current_revision(conn))
        command.downgrade(alembic_config(url, conn), target)
