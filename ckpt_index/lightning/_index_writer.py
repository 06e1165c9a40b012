"""Index upserts and deletions on a background thread: a slow or locked index never stalls training.

Operations are applied in submission order. Whatever is queued when the thread wakes up goes into
one write transaction, so a burst of saves costs one commit and a locked SQLite index costs one
busy timeout per burst, not one per checkpoint. A batch that fails is rolled back whole and
reported; the sidecars already on disk remain the source of truth for the next ``ckpt-index sync``.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine

from ckpt_index.index.boundary import check_record
from ckpt_index.index.engine import open_engine, resolve_db_url, run_write
from ckpt_index.index.records import FileState, record_from_metadata
from ckpt_index.index.store import add_alias, delete_paths, drop_aliases, upsert_records
from ckpt_index.sidecar.schema import CheckpointMetadataV1, metadata_warnings

_STOP = object()


@dataclass
class Upsert:
    meta: CheckpointMetadataV1
    checkpoint_path: str
    sidecar_path: str
    ckpt: FileState
    sidecar: FileState

    #: A ``last*.ckpt`` written as a copy of another checkpoint (the row loses ties to it).
    is_last: bool = False


@dataclass
class Delete:
    checkpoint_path: str


@dataclass
class Alias:
    """``link`` (a symbolic or hard link) now points at ``target``: one row, the target's."""

    target: str
    link: str


def is_link_to(link: str, target: str) -> bool:
    """Whether ``link`` is a symbolic or hard link to ``target`` (not a copy of it)."""
    try:
        return os.path.islink(link) or os.path.samefile(link, target)
    except OSError:
        return False


class IndexWriter:
    """A thread that owns the engine (opened on first use) and applies queued operations.

    Args:
        db: Path or SQLAlchemy URL of the index, or ``None`` for the standard resolution.
        busy_timeout: Seconds a write waits for a locked SQLite index before the batch is dropped.
        report: Called with a message and the exception when a batch fails.
    """

    def __init__(
        self,
        db: str | os.PathLike[str] | None,
        *,
        busy_timeout: float,
        report: Callable[[str, BaseException | None], None],
    ) -> None:
        self._db = db
        self._busy_ms = max(0, int(busy_timeout * 1000))
        self._report = report
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._engine: Engine | None = None
        #: Seconds spent applying each batch (for scripts/bench_callback.py).
        self.batch_seconds: list[float] = []
        self.applied = 0

    def submit(self, op: Upsert | Delete | Alias) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ckpt-index-writer", daemon=True)
            self._thread.start()
        self._queue.put(op)

    def close(self, timeout: float | None = None) -> bool:
        """Apply what is queued, stop the thread; ``False`` if it did not finish in ``timeout``."""
        thread, self._thread = self._thread, None
        if thread is None:
            return True
        self._queue.put(_STOP)
        thread.join(timeout)
        if thread.is_alive():
            self._report(
                f"the index writer did not finish within {timeout:.0f}s; its remaining updates "
                "are abandoned (the sidecars are written)",
                None,
            )
            return False
        return True

    def _run(self) -> None:
        try:
            while True:
                batch = [self._queue.get()]
                while True:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                ops = [op for op in batch if op is not _STOP]
                if ops:
                    self._apply(ops)
                if len(ops) != len(batch):
                    return
        finally:
            # The engine lives as long as the thread (a batch opens it when first needed, so a
            # failure to open is reported for that batch and tried again by the next one).
            engine, self._engine = self._engine, None
            if engine is not None:
                engine.dispose()

    def _set_busy_timeout(self, dbapi_conn: Any) -> None:
        dbapi_conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")

    def _apply(self, ops: list[Upsert | Delete | Alias]) -> None:
        started = time.perf_counter()
        try:
            if self._engine is None:
                self._engine = open_engine(self._db, on_connect=self._set_busy_timeout)

            def apply(conn: Connection) -> None:
                for run in _runs(ops):
                    _apply_run(conn, run)

            # A lost race (SQLite lock past the busy timeout, PostgreSQL deadlock) is retried a
            # few times on this background thread; only a lasting failure is reported.
            run_write(self._engine, apply, attempts=3)
        except Exception as exc:  # noqa: BLE001 - reported; training must go on
            self._report(
                f"could not update the index {resolve_db_url(self._db)} ({len(ops)} "
                "checkpoint(s)); their sidecars are written, `ckpt-index sync` will index them",
                exc,
            )
            return
        self.applied += len(ops)
        self.batch_seconds.append(time.perf_counter() - started)


def _runs(ops: list[Upsert | Delete | Alias]) -> list[list[Upsert | Delete | Alias]]:
    """Consecutive operations of the same kind, in order (one statement each)."""
    runs: list[list[Upsert | Delete | Alias]] = []
    for op in ops:
        if runs and type(runs[-1][0]) is type(op):
            runs[-1].append(op)
        else:
            runs.append([op])
    return runs


def _apply_run(conn: Connection, run: list[Upsert | Delete | Alias]) -> None:
    """One statement for a run of operations of one kind (see :func:`_runs`)."""
    deletes = [op.checkpoint_path for op in run if isinstance(op, Delete)]
    if deletes:
        delete_paths(conn, deletes)
        drop_aliases(conn, deletes)  # a removed best-* link is no longer an alias
        return
    aliases = [op for op in run if isinstance(op, Alias)]
    if aliases:
        for alias in aliases:
            drop_aliases(conn, [alias.link])  # a link moved from an older target
            add_alias(conn, alias.target, alias.link)
        return
    upserts = [op for op in run if isinstance(op, Upsert)]
    records = [
        record_from_metadata(
            op.meta,
            checkpoint_path=op.checkpoint_path,
            sidecar_path=op.sidecar_path,
            ckpt=op.ckpt,
            sidecar=op.sidecar,
            warnings=metadata_warnings(op.meta),
        )
        for op in upserts
    ]
    for record, upsert in zip(records, upserts, strict=True):
        record.columns["is_last"] = upsert.is_last
    # The same boundary as a sync's: a row either backend would refuse is made storable.
    upsert_records(conn, [check_record(r) for r in records])
