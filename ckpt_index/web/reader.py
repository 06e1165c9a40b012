"""Reading the index from a long-running server: read-only, and fresh after a sync.

The reading commands open the index once per run (:func:`ckpt_index.cli.common.read_index`); a
server lives on while ``sync`` or the training callback writes. An idle SQLite index is read
without locks (``immutable``: nothing is created beside it), which is only right while the file
does not change; so the engine is reopened when the file's identity or the presence of its
``-wal`` changes, and a read that overlapped a write is run again. PostgreSQL keeps one engine
whose transactions are READ ONLY.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine

from ckpt_index.index.engine import (
    IndexChangedError,
    check_unlocked_read,
    is_sqlite,
    open_engine,
    resolve_db_url,
    sqlite_file,
)

T = TypeVar("T")
#: Reads run again this many times when a write overlapped them (then the error is raised).
_ATTEMPTS = 3


class IndexReader:
    """``reader.read(fn)`` runs ``fn(conn)`` on the index opened read-only at head.

    Opening raises what :func:`~ckpt_index.index.engine.open_engine` raises for a reading command
    (no index, an index that needs ``db upgrade``, one from a newer release): the server checks
    the index once at start with :meth:`open`.
    """

    def __init__(self, db: str | None) -> None:
        self.url = resolve_db_url(db)
        self._path = sqlite_file(self.url) if is_sqlite(self.url) else None
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._state: Any = None

    def _file_state(self) -> Any:
        if self._path is None:
            return None
        try:
            st = os.stat(self._path)
        except OSError:
            return "missing"
        return st.st_ino, st.st_size, st.st_mtime_ns, os.path.exists(self._path + "-wal")

    def token(self) -> Any:
        """What changes whenever the SQLite index is written (its file and its ``-wal``), for
        caching answers; ``None`` on PostgreSQL (no cheap equivalent: nothing is cached)."""
        if self._path is None:
            return None
        try:
            st = os.stat(self._path)
        except OSError:
            return None
        try:
            wal = os.stat(self._path + "-wal")
            wal_state: tuple[int, int, int] | None = (wal.st_ino, wal.st_size, wal.st_mtime_ns)
        except OSError:
            wal_state = None
        return st.st_ino, st.st_size, st.st_mtime_ns, wal_state

    def open(self) -> Engine:
        """The engine for the index as it is now (reopened when the SQLite file changed)."""
        with self._lock:
            state = self._file_state()
            if self._engine is None or state != self._state:
                old, self._engine = self._engine, None
                if old is not None:
                    old.dispose()
                self._engine = open_engine(self.url, readonly=True)
                self._state = state
            return self._engine

    def _forget(self, engine: Engine) -> None:
        with self._lock:
            if self._engine is engine:
                self._engine = None
        engine.dispose()

    def read(self, fn: Callable[[Connection], T]) -> T:
        """``fn(conn)`` on a read-only connection; run again if a write overlapped the read."""
        for attempt in range(_ATTEMPTS):
            engine = self.open()
            with engine.connect() as conn:
                result = fn(conn)
            try:
                check_unlocked_read(engine)
            except IndexChangedError:
                self._forget(engine)
                if attempt == _ATTEMPTS - 1:
                    raise
                continue
            return result
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None
