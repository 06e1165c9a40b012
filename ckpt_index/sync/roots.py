"""The sync engine: walk roots for checkpoints and sidecars, bring the index in line.

A sync is a diff between the files under each root and the rows under it. Sidecars whose size and
mtime match their row are not read again; everything else is parsed and written in batches, one
transaction per batch. Each row is always the image of some state of its files, so a sync killed
at any point leaves a consistent index, and the next sync (which sees the stale file states)
finishes the job.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from ckpt_index.index import store
from ckpt_index.index.engine import is_transient, resolve_location, run_write
from ckpt_index.index.records import (
    FileState,
    Record,
    checkpoint_state_columns,
    unpack_params,
)
from ckpt_index.isolation.pool import Limits
from ckpt_index.sync import recheck
from ckpt_index.sync.build import (
    SyncOptions,
    build_record_safely,
    build_record_task,
    checked_record,
    failed_record,
    item_args,
    one_line,
)
from ckpt_index.sync.scan import Found, alias_columns, alias_patch, scan
from ckpt_index.sync.summary import SyncSummary

__all__ = ["BATCH_SIZE", "RACY_WINDOW_NS", "Progress", "SyncSummary", "sync_roots"]

BATCH_SIZE = 1000
#: Files modified this close to the scan may change again within the same mtime tick; their rows
#: are stored with a sentinel mtime so that the next sync re-reads them (git's "racy clean" rule).
RACY_WINDOW_NS = 2_000_000_000

Progress = Callable[[int, int], None]


def _same(state: FileState | None, size, mtime_ns) -> bool:
    return state is not None and state.size == size and state.mtime_ns == mtime_ns


def _batches(items: Iterable, size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def sync_roots(
    engine: Engine,
    roots: Iterable[str | os.PathLike[str]],
    *,
    progress: Progress | None = None,
    location: str | None = None,
    infer: bool = True,
    wandb_online: bool = False,
    full: bool = False,
    inspect: bool = False,
    limits: Limits | None = None,
) -> SyncSummary:
    """Bring this location's rows under each root in line with its files; return what was done.

    Rows of other locations (other machines sharing the index) are never touched. ``full``
    re-reads every file; ``inspect`` reads the pickle of checkpoints that have a sidecar too
    (``unsafe_globals``); ``limits`` bounds each parsing worker (:mod:`ckpt_index.isolation.pool`).
    """
    started = time.perf_counter()
    summary = SyncSummary(location=resolve_location(location))
    options = SyncOptions(
        infer=infer,
        wandb_online=wandb_online,
        engine=engine,
        full=full,
        inspect=inspect,
        limits=limits,
        db_url=engine.url.render_as_string(hide_password=False) if wandb_online else None,
    )
    for root in roots:
        # Resolved like Lightning resolves its dirpath, so that rows written by the training
        # callback and by a sync of the same tree share their paths even through a symlink.
        root_path = os.path.realpath(os.fspath(root))
        if not Path(root_path).is_dir():
            raise NotADirectoryError(f"{root_path}: not a directory")
        summary.roots.append(root_path)
        _sync_root(engine, root_path, summary, progress, options)
    summary.elapsed_s = time.perf_counter() - started
    return summary


def _under(path: str, directories: list[str]) -> str | None:
    """The first of ``directories`` that ``path`` lies below, if any."""
    for directory in directories:
        if path.startswith(directory.rstrip("/") + "/"):
            return directory
    return None


def _sync_root(
    engine: Engine,
    root: str,
    summary: SyncSummary,
    progress: Progress | None,
    options: SyncOptions,
) -> None:
    _RootSync(engine, root, summary, progress, options).run()


class _RootSync:
    """One root's sync: read its rows, list its files, then parse and write what changed, patch
    rows whose files need no reading and delete rows whose files are gone."""

    def __init__(
        self,
        engine: Engine,
        root: str,
        summary: SyncSummary,
        progress: Progress | None,
        options: SyncOptions,
    ) -> None:
        self.engine, self.root, self.summary = engine, root, summary
        self.progress, self.options = progress, options
        self.racy_after_ns = time.time_ns() - RACY_WINDOW_NS
        self.existing: dict[str, Any] = {}
        self.found: dict[str, Found] = {}
        #: Files to parse, rows to patch without reading their files, ids of rows to delete.
        self.to_parse: list[str] = []
        self.flagged: list[tuple[int, dict[str, Any]]] = []
        self.gone: list[int] = []
        self.done = 0

    def run(self) -> None:
        # Rows are read before the files are listed: a row a training callback adds meanwhile is
        # then never mistaken for one whose file is gone (its file may not have been listed yet).
        self.existing = self._read_rows()
        rejected: list[tuple[str, str]] = []
        unlisted: list[tuple[str, str]] = []
        links: list[tuple[str, str]] = []
        self.found = scan(self.root, rejected, unlisted, links)
        self.summary.dangling_links.extend(links)
        self.summary.invalid += len(rejected)
        self.summary.invalid_files.extend(rejected)
        self.summary.unlisted_dirs.extend(unlisted)
        self._plan_found()
        self._plan_vanished(dict(unlisted))
        self._parse_and_write()
        if self.flagged or self.gone:
            self._patch()
        if any(path in self.existing for path in self.to_parse):
            # Rows rewritten may have left their former parameter sets unused.
            run_write(self.engine, store.sweep_param_sets)

    @property
    def total(self) -> int:
        return len(self.to_parse) + len(self.flagged) + len(self.gone)

    def _read_rows(self) -> dict[str, Any]:
        with self.engine.connect() as conn:
            # fetchall() in one go: at 100k rows, fetching Row objects one by one costs a second.
            rows = store.rows_under(conn, self.root, location=self.summary.location).all()
            conn.rollback()
        return {row[1]: row for row in rows}

    def _plan_found(self) -> None:
        """Sort the files listed: to parse, or unchanged (with a row to patch at most)."""
        summary, options = self.summary, self.options
        for path, item in self.found.items():
            summary.checkpoints += item.ckpt is not None
            summary.sidecars += item.sidecar is not None
            row = self.existing.get(path)
            if options.full or row is None or not _row_current(row, item, options):
                self.to_parse.append(path)
                continue
            summary.unchanged += 1
            summary.count(row.status, item, path, row.sidecar_path, row.error)
            # Most rows have no links and are no copy: skip building the alias columns for them.
            has_links = item.aliases or item.is_last or row.aliases is not None or row.is_last
            patch = alias_patch(row, item) if has_links else {}
            if not _same(item.ckpt, row.ckpt_size, row.ckpt_mtime_ns):
                # Only a row that never read its checkpoint (--no-infer) gets here: patch its state.
                patch.update(checkpoint_state_columns(item.ckpt))
            if patch:
                self.flagged.append((row.id, patch))

    def _plan_vanished(self, unlisted: dict[str, str]) -> None:
        """Rows whose files were not listed: deleted, unless their directory could not be listed.

        Such a row is kept as it was, flagged, never pruned: a directory unreadable for a moment
        (an NFS hiccup, a chmod) must not lose its rows. ``unlisted``: reason by directory.
        """
        directories = list(unlisted)
        for path, row in self.existing.items():
            if path in self.found:
                continue
            directory = _under(path, directories)
            if directory is None:
                self.gone.append(row.id)
            else:
                self.flagged.append((row.id, {"scan_error": unlisted[directory]}))
                self.summary.kept += 1

    def _parse_and_write(self) -> None:
        found, existing, summary = self.found, self.existing, self.summary
        built = _build_records(sorted(self.to_parse), found, self.racy_after_ns, self.options)
        for batch in _batches(built, BATCH_SIZE):
            records = [(path, record) for path, record, _ in batch]
            for path, record in records:
                record.columns.update(alias_columns(found[path]))
            same = recheck.unchanged_rows(self.engine, records, existing, found)
            final = _write_batch(self.engine, records, found, existing, summary.location)
            for path, record, reason in batch:
                if path in final:  # the database refused the row: it was stored as invalid
                    record = final[path]
                    reason = record.columns["error"]
                summary.parsed += found[path].sidecar is not None
                if path in same and path not in final:
                    summary.unchanged += 1
                elif path in existing:
                    summary.updated += 1
                else:
                    summary.added += 1
                columns = record.columns
                summary.count(columns["status"], found[path], path, columns["sidecar_path"], reason)
            self._advance(len(batch))

    def _patch(self) -> None:
        flagged, gone = self.flagged, self.gone

        def patch(conn) -> None:
            store.update_columns(conn, flagged)
            store.delete_rows(conn, gone)

        run_write(self.engine, patch)
        self.summary.removed += len(gone)
        self._advance(len(flagged) + len(gone))

    def _advance(self, count: int) -> None:
        self.done += count
        if self.progress:
            self.progress(self.done, self.total)


def _write_batch(
    engine: Engine,
    batch: list[tuple[str, Record]],
    found: dict[str, Found],
    existing: dict[str, Any],
    location: str,
) -> dict[str, Record]:
    """Write ``batch``; return the rows that had to be replaced, by path.

    A batch the database refuses is split in halves until the row it refuses is found; that row
    is stored as invalid with the database's reason and the rest land. When even that minimal
    row is refused, the fault is the database's, not the file's, and the error propagates.
    """
    records = [record for _, record in batch]
    seen = [r for r in records if r.checkpoint_path in existing]
    new = [r for r in records if r.checkpoint_path not in existing]

    def write(conn) -> None:
        store.upsert_records(conn, seen, location=location)
        # A row that appeared after this sync read the rows was written by someone who wrote
        # the files first (the training callback): it is at least as new as what the scan
        # saw, which may be a checkpoint whose sidecar was not written yet.
        store.upsert_records(conn, new, location=location, overwrite=False)

    try:
        run_write(engine, write)
        return {}
    except Exception as exc:
        if is_transient(exc):
            raise
        if len(batch) > 1:
            middle = len(batch) // 2
            return {
                **_write_batch(engine, batch[:middle], found, existing, location),
                **_write_batch(engine, batch[middle:], found, existing, location),
            }
        path = batch[0][0]
        replacement, _ = checked_record(
            path,
            found[path],
            failed_record(path, found[path], one_line(f"cannot be stored: {exc}")),
            None,
        )
        try:
            _write_one(engine, replacement, existing, location)
        except Exception:
            raise exc from None
        return {path: replacement}


def _write_one(engine: Engine, record: Record, existing: dict[str, Any], location: str) -> None:
    overwrite = record.checkpoint_path in existing
    run_write(
        engine,
        lambda conn: store.upsert_records(conn, [record], location=location, overwrite=overwrite),
    )


#: Below this many sidecars to read, starting worker processes costs more than it saves.
PARALLEL_MIN = 256
#: Files sent to a worker at once: about 60 ms of work, for sidecars (~0.5 ms each) and for
#: checkpoints read by the fallbacks (~2 ms each). Replies come a few at a time.
_CHUNK_SIDECARS, _CHUNK_CHECKPOINTS = 128, 32


def _needs_isolation(item: Found, options: SyncOptions) -> bool:
    """Whether building the row parses untrusted binary or config files (not just a sidecar)."""
    if item.ckpt is None:
        return False
    return options.inspect if item.sidecar_path is not None else options.infer


def _build_records(
    paths: list[str],
    found: dict[str, Found],
    racy_after_ns: int,
    options: SyncOptions,
) -> Iterator[tuple[str, Record, str | None]]:
    """(path, record, reason) for each path, in order.

    Checkpoints without a sidecar are read by worker processes under limits (a crash or a limit
    becomes that file's ``unreadable`` status); so are sidecars when there are enough of them
    for the cores to pay off. A small sync of sidecars alone is parsed here: the sidecar reader
    bounds its own work (size, depth, aliases) and runs no C code that recurses on input.
    """
    isolated = sum(_needs_isolation(found[p], options) for p in paths)
    if not isolated and len(paths) < PARALLEL_MIN:
        for path in paths:
            record, reason = build_record_safely(path, found[path], racy_after_ns, options)
            yield (path, *checked_record(path, found[path], record, reason))
        return
    from ckpt_index.isolation.pool import WorkerPool

    chunk = _CHUNK_CHECKPOINTS if isolated * 4 >= len(paths) else _CHUNK_SIDECARS
    workers = max(1, min(os.cpu_count() or 1, 8, -(-len(paths) // chunk)))
    worker_options = options.for_worker()
    jobs = [(path, item_args(found[path]), racy_after_ns, worker_options) for path in paths]
    with WorkerPool(workers, options.limits, chunk=chunk) as pool:
        for path, outcome in zip(paths, pool.map(build_record_task, jobs), strict=True):
            if outcome.ok:  # checked by the worker (checked_record)
                columns, metrics, reason, packed, params_digest = outcome.value
                params = unpack_params(packed, params_digest)
                yield path, Record(columns, metrics, params, params_digest), reason
            else:
                reason = outcome.reason or "reader failed"
                yield (
                    path,
                    *checked_record(
                        path,
                        found[path],
                        failed_record(path, found[path], reason, checkpoint=True),
                        reason,
                    ),
                )


def _row_current(row, item: Found, options: SyncOptions) -> bool:
    """Whether a row still describes the files, up to what is cheap to patch.

    A sidecar'd row only needs the checkpoint's size/mtime patched when the checkpoint changes;
    an inferred row was read from the checkpoint, so a changed checkpoint is read again.
    """
    if (row.checkpoint_exists) != (item.ckpt is not None) or row.scan_error is not None:
        return False
    if item.sidecar is None:
        if row.sidecar_path is not None:
            return False
        if not options.infer:
            return row.status == "missing"
        return row.status in ("inferred", "unreadable") and _same(
            item.ckpt, row.ckpt_size, row.ckpt_mtime_ns
        )
    # The checkpoint beside a sidecar is checked too (integrity, staleness): a replaced or
    # truncated checkpoint is read again.
    return (
        row.status in ("valid", "invalid", "unreadable")
        and row.sidecar_path == item.sidecar_path
        and _same(item.sidecar, row.sidecar_size, row.sidecar_mtime_ns)
        and (item.ckpt is None or _same(item.ckpt, row.ckpt_size, row.ckpt_mtime_ns))
        # --inspect reads the checkpoints of rows that were indexed without it.
        and not (
            options.inspect
            and row.status == "valid"
            and item.ckpt is not None
            and row.unsafe_globals is None
        )
    )
