"""The sync engine: walk roots for checkpoints and sidecars, bring the index in line (SPEC section 6).

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
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sqlalchemy import Engine

from ckpt_index.db import resolve_location, run_write
from ckpt_index.records import (
    FileState,
    Record,
    checkpoint_state_columns,
    record_from_inferred,
    record_from_metadata,
    record_without_metadata,
)
from ckpt_index.schema import metadata_warnings
from ckpt_index.sidecar import CKPT_SUFFIX, SIDECAR_SUFFIX, SidecarError, read_sidecar
from ckpt_index import store

BATCH_SIZE = 1000
#: Files modified this close to the scan may change again within the same mtime tick; their rows
#: are stored with a sentinel mtime so that the next sync re-reads them (git's "racy clean" rule).
RACY_WINDOW_NS = 2_000_000_000

Progress = Callable[[int, int], None]


@dataclass
class SyncSummary:
    location: str = ""
    roots: list[str] = field(default_factory=list)
    checkpoints: int = 0
    sidecars: int = 0
    parsed: int = 0
    unchanged: int = 0
    added: int = 0
    updated: int = 0
    removed: int = 0
    valid: int = 0
    invalid: int = 0
    orphaned: int = 0
    #: Checkpoints without a sidecar: filled from fallbacks, unreadable, or left empty (--no-infer).
    inferred: int = 0
    unreadable: int = 0
    without_metadata: int = 0
    elapsed_s: float = 0.0
    #: (path, reason) of every invalid sidecar and unreadable checkpoint under the roots.
    invalid_files: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["invalid_files"] = [{"path": p, "reason": r} for p, r in self.invalid_files]
        return data

    def one_line(self) -> str:
        return (
            f"synced {self.checkpoints} checkpoints, {self.sidecars} sidecars in "
            f"{self.elapsed_s:.2f}s: {self.added} added, {self.updated} updated, "
            f"{self.removed} removed, {self.unchanged} unchanged; {self.valid} valid, "
            f"{self.invalid} invalid, {self.inferred} inferred, {self.unreadable} unreadable, "
            f"{self.without_metadata} without metadata, {self.orphaned} orphaned sidecars"
        )


class _Found:
    """The files of one checkpoint path (slotted: a large tree makes hundreds of thousands)."""

    __slots__ = ("ckpt", "sidecar_path", "sidecar")

    def __init__(self) -> None:
        self.ckpt: FileState | None = None
        self.sidecar_path: str | None = None
        self.sidecar: FileState | None = None


def _storable(path: str) -> bool:
    """Whether the index can hold ``path``: os.scandir hands out undecodable bytes as surrogates."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def scan(root: str, rejected: list[tuple[str, str]] | None = None) -> dict[str, _Found]:
    """Checkpoints and sidecars below ``root``, keyed by absolute checkpoint path.

    Files whose names are not UTF-8 cannot be stored; they go to ``rejected`` with a reason.
    """
    found: dict[str, _Found] = {}
    pending = [root]
    while pending:
        directory = pending.pop()
        try:
            entries = os.scandir(directory)
        except OSError:
            continue  # vanished or unreadable directory: nothing under it can be indexed
        with entries:
            for entry in entries:
                name = entry.name
                try:
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(entry.path)
                        if not name.endswith(SIDECAR_SUFFIX):
                            continue
                        # A directory where a sidecar belongs is recorded as one, so that it is
                        # reported invalid ("is a directory") rather than silently ignored.
                    indexable = name.endswith(CKPT_SUFFIX) or name.endswith(SIDECAR_SUFFIX)
                    if indexable and not _storable(entry.path):
                        if rejected is not None:
                            shown = entry.path.encode("utf-8", "backslashreplace").decode()
                            rejected.append((shown, "file name is not UTF-8; rename it to index it"))
                        continue
                    if name.endswith(CKPT_SUFFIX):
                        st = entry.stat()
                        found.setdefault(entry.path, _Found()).ckpt = FileState(
                            st.st_size, st.st_mtime_ns
                        )
                    elif name.endswith(SIDECAR_SUFFIX):
                        st = entry.stat()
                        key = entry.path[: -len(SIDECAR_SUFFIX)] + CKPT_SUFFIX
                        slot = found.setdefault(key, _Found())
                        slot.sidecar_path = entry.path
                        slot.sidecar = FileState(st.st_size, st.st_mtime_ns)
                except OSError:
                    continue  # a dangling link or a file deleted mid-scan
    return found


def _same(state: FileState | None, size, mtime_ns) -> bool:
    return state is not None and state.size == size and state.mtime_ns == mtime_ns


@dataclass
class SyncOptions:
    #: Fill checkpoints without a sidecar from the fallbacks (checkpoint, Hydra, W&B, paths).
    infer: bool = True
    #: Ask the W&B API for runs not found on disk (cached in the index).
    wandb_online: bool = False
    engine: Engine | None = None


def build_record(
    path: str, item: _Found, racy_after_ns: int, options: SyncOptions | None = None
) -> tuple[Record, str | None]:
    """The row for one checkpoint from its files; also why its sidecar or checkpoint is unusable."""
    options = options or SyncOptions()
    sidecar = item.sidecar
    # A NULL mtime matches no file, so a row built from a file still inside the racy window is
    # always read again (0 would match a file whose mtime was set to the epoch).
    if sidecar is not None and sidecar.mtime_ns >= racy_after_ns:
        sidecar = FileState(sidecar.size, None)
    ckpt = item.ckpt
    if ckpt is not None and ckpt.mtime_ns >= racy_after_ns:
        ckpt = FileState(ckpt.size, None)
    if item.sidecar_path is None:
        if options.infer and item.ckpt is not None:
            from ckpt_index.fallback import infer_metadata

            inferred = infer_metadata(
                path, wandb_online=options.wandb_online, engine=options.engine
            )
            return record_from_inferred(inferred, ckpt=ckpt), inferred.unreadable
        record = record_without_metadata(
            checkpoint_path=path, sidecar_path=None, ckpt=item.ckpt, sidecar=None, error=None
        )
        return record, None
    try:
        meta = read_sidecar(item.sidecar_path)
    except SidecarError as exc:
        record = record_without_metadata(
            checkpoint_path=path, sidecar_path=item.sidecar_path, ckpt=item.ckpt,
            sidecar=sidecar, error=exc.reason,
        )
        return record, exc.reason
    record = record_from_metadata(
        meta, checkpoint_path=path, sidecar_path=item.sidecar_path, ckpt=item.ckpt,
        sidecar=sidecar, warnings=metadata_warnings(meta),
    )
    return record, None


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
) -> SyncSummary:
    """Bring this location's rows under each root in line with its files; return what was done.

    Rows of other locations (other machines sharing the index) are never touched.
    """
    started = time.perf_counter()
    summary = SyncSummary(location=resolve_location(location))
    options = SyncOptions(infer=infer, wandb_online=wandb_online, engine=engine)
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


def _sync_root(
    engine: Engine, root: str, summary: SyncSummary, progress: Progress | None,
    options: SyncOptions,
) -> None:
    racy_after_ns = time.time_ns() - RACY_WINDOW_NS
    # Rows are read before the files are listed: a row a training callback adds meanwhile is then
    # never mistaken for one whose file is gone (its file may not have been listed yet).
    with engine.connect() as conn:
        # fetchall() in one go: at 100k rows, fetching Row objects one by one costs a second.
        existing = {row[1]: row for row in store.rows_under(conn, root, location=summary.location).all()}
        conn.rollback()
    rejected: list[tuple[str, str]] = []
    found = scan(root, rejected)
    summary.invalid += len(rejected)
    summary.invalid_files.extend(rejected)

    to_parse: list[str] = []
    state_updates: list[tuple[int, dict]] = []
    for path, item in found.items():
        summary.checkpoints += item.ckpt is not None
        summary.sidecars += item.sidecar is not None
        row = existing.get(path)
        if row is None or not _row_current(row, item, options.infer):
            to_parse.append(path)
            continue
        summary.unchanged += 1
        _count_status(summary, row.status, item, path, row.sidecar_path, row.error)
        if not _same(item.ckpt, row.ckpt_size, row.ckpt_mtime_ns):
            state_updates.append((row.id, checkpoint_state_columns(item.ckpt)))
    gone = [row.id for path, row in existing.items() if path not in found]

    done, total = 0, len(to_parse) + len(state_updates) + len(gone)
    built = _build_records(sorted(to_parse), found, racy_after_ns, options, engine)
    for batch in _batches(built, BATCH_SIZE):
        records = []
        for path, record, reason in batch:
            records.append(record)
            summary.parsed += found[path].sidecar is not None
            if path in existing:
                summary.updated += 1
            else:
                summary.added += 1
            _count_status(summary, record.columns["status"], found[path], path,
                          record.columns["sidecar_path"], reason)
        seen = [r for r in records if r.checkpoint_path in existing]
        new = [r for r in records if r.checkpoint_path not in existing]

        def write(conn, seen=seen, new=new) -> None:
            store.upsert_records(conn, seen, location=summary.location)
            # A row that appeared after this sync read the rows was written by someone who wrote
            # the files first (the training callback): it is at least as new as what the scan
            # saw, which may be a checkpoint whose sidecar was not written yet.
            store.upsert_records(conn, new, location=summary.location, overwrite=False)

        run_write(engine, write)
        done += len(batch)
        if progress:
            progress(done, total)
    if state_updates or gone:
        def patch(conn) -> None:
            store.update_columns(conn, state_updates)
            store.delete_rows(conn, gone)

        run_write(engine, patch)
        summary.removed += len(gone)
        done += len(state_updates) + len(gone)
        if progress:
            progress(done, total)


#: Below this many files to read, a process pool costs more than it saves.
PARALLEL_MIN = 256
_CHUNK = 128


def _build_records(
    paths: list[str], found: dict[str, _Found], racy_after_ns: int, options: SyncOptions,
    engine: Engine,
) -> Iterator[tuple[str, Record, str | None]]:
    """(path, record, reason) for each path, in order; parsed by a process pool when it pays.

    Parsing YAML and validating it is CPU-bound Python, so a sync of thousands of new sidecars
    uses every core; the parent keeps writing batches as results arrive.
    """
    workers = min(os.cpu_count() or 1, 8)
    context = _pool_context()
    if len(paths) < PARALLEL_MIN or workers < 2 or context is None or options.wandb_online:
        for path in paths:
            yield (path, *build_record(path, found[path], racy_after_ns, options))
        return
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    # The children never touch the database; drop pooled connections rather than fork them.
    engine.dispose()
    worker_options = SyncOptions(infer=options.infer)
    chunks = [
        [(path, found[path]) for path in paths[i : i + _CHUNK]]
        for i in range(0, len(paths), _CHUNK)
    ]
    done = 0
    try:
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            jobs = pool.map(_build_chunk, chunks, [racy_after_ns] * len(chunks),
                            [worker_options] * len(chunks))
            for results in jobs:
                yield from results
                done += 1
    except BrokenProcessPool:
        # A worker died (killed, out of memory): finish in-process rather than fail the sync.
        for chunk in chunks[done:]:
            yield from _build_chunk(chunk, racy_after_ns, options)


def _build_chunk(
    items: list[tuple[str, _Found]], racy_after_ns: int, options: SyncOptions
) -> list[tuple[str, Record, str | None]]:
    return [(path, *build_record(path, item, racy_after_ns, options)) for path, item in items]


def _pool_context():
    """fork, when this process has a single thread; None (parse in-process) otherwise.

    A fork can inherit a lock another thread holds (a notebook kernel, a UI server), and spawn or
    forkserver re-import the caller's __main__, which is not always importable; a sync that could
    hang or fail that way is not worth its speed-up.
    """
    import multiprocessing
    import threading

    if threading.active_count() > 1 or "fork" not in multiprocessing.get_all_start_methods():
        return None
    return multiprocessing.get_context("fork")


def _row_current(row, item: _Found, infer: bool) -> bool:
    """Whether a row still describes the files, up to what is cheap to patch.

    A sidecar'd row only needs the checkpoint's size/mtime patched when the checkpoint changes;
    an inferred row was read from the checkpoint, so a changed checkpoint is read again.
    """
    if (row.checkpoint_exists) != (item.ckpt is not None):
        return False
    if item.sidecar is None:
        if row.sidecar_path is not None:
            return False
        if not infer:
            return row.status == "missing"
        return row.status in ("inferred", "unreadable") and _same(
            item.ckpt, row.ckpt_size, row.ckpt_mtime_ns
        )
    return (
        row.status in ("valid", "invalid")
        and row.sidecar_path == item.sidecar_path
        and _same(item.sidecar, row.sidecar_size, row.sidecar_mtime_ns)
    )


def _count_status(
    summary: SyncSummary, status: str, item: _Found, item_path: str, sidecar_path: str | None,
    reason: str | None,
) -> None:
    if status == "valid":
        summary.valid += 1
    elif status == "invalid":
        summary.invalid += 1
        summary.invalid_files.append((sidecar_path or "", reason or ""))
    elif status == "inferred":
        summary.inferred += 1
    elif status == "unreadable":
        summary.unreadable += 1
        summary.invalid_files.append((item_path, reason or ""))
    else:
        summary.without_metadata += 1
    if item.sidecar is not None and item.ckpt is None:
        summary.orphaned += 1
