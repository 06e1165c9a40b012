"""The row of one checkpoint from its files: its sidecar, or what the fallbacks find.

This is what a sync runs per file, in its own process or in a parsing worker
(:mod:`ckpt_index.isolation.pool`); it imports no database code, so workers start quickly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ckpt_index.index.boundary import UnstorableRecord, check_record
from ckpt_index.index.records import (
    FileState,
    Record,
    pack_params,
    record_from_inferred,
    record_from_metadata,
    record_without_metadata,
)
from ckpt_index.sidecar.files import SidecarError, read_sidecar
from ckpt_index.sync.scan import Found

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from ckpt_index.isolation.pool import Limits
    from ckpt_index.sources.wandb.online import AnswerCache


@dataclass
class SyncOptions:
    #: Fill checkpoints without a sidecar from the fallbacks (checkpoint, Hydra, W&B, paths).
    infer: bool = True
    #: Ask the W&B API for runs not found on disk (cached in the index).
    wandb_online: bool = False
    engine: Engine | None = None
    #: Re-read every file, even those whose size and mtime match their row.
    full: bool = False
    #: Memory and time per file for the parsing workers (default: ``Limits.from_env()``).
    limits: Limits | None = None
    #: The index's URL, for workers that cache W&B API answers in it (``wandb_online``).
    db_url: str | None = None
    #: Read the pickle of checkpoints that have a sidecar too, to record ``unsafe_globals``
    #: (checkpoints without one are always read). Costs a worker read per checkpoint.
    inspect: bool = False

    def for_worker(self) -> dict[str, Any]:
        """What a parsing worker needs (an engine does not cross a process boundary)."""
        return {
            "infer": self.infer,
            "wandb_online": self.wandb_online,
            "db_url": self.db_url,
            "inspect": self.inspect,
        }


def _without_racy_mtime(state: FileState | None, racy_after_ns: int) -> FileState | None:
    """``state``, with no mtime when the file changed within the racy window."""
    if state is None or state.mtime_ns is None or state.mtime_ns < racy_after_ns:
        return state
    return FileState(state.size, None)


def build_record(
    path: str, item: Found, racy_after_ns: int, options: SyncOptions | None = None
) -> tuple[Record, str | None]:
    """The row for one checkpoint from its files; also why its sidecar or checkpoint is unusable."""
    options = options or SyncOptions()
    # A NULL mtime matches no file, so a row built from a file still inside the racy window is
    # always read again (0 would match a file whose mtime was set to the epoch).
    sidecar = _without_racy_mtime(item.sidecar, racy_after_ns)
    ckpt = _without_racy_mtime(item.ckpt, racy_after_ns)
    if item.sidecar_path is None:
        if options.infer and item.ckpt is not None:
            from ckpt_index.sources.merge import infer_metadata

            inferred = infer_metadata(
                path, wandb_online=options.wandb_online, wandb_cache=_wandb_cache(options)
            )
            return record_from_inferred(inferred, ckpt=ckpt), inferred.unreadable
        record = record_without_metadata(
            checkpoint_path=path, sidecar_path=None, ckpt=item.ckpt, sidecar=None, error=None
        )
        return record, None
    from ckpt_index.sidecar.schema import metadata_warnings

    try:
        meta = read_sidecar(item.sidecar_path)
    except SidecarError as exc:
        record = record_without_metadata(
            checkpoint_path=path,
            sidecar_path=item.sidecar_path,
            ckpt=item.ckpt,
            sidecar=sidecar,
            error=exc.reason,
        )
        return record, exc.reason
    record = record_from_metadata(
        meta,
        checkpoint_path=path,
        sidecar_path=item.sidecar_path,
        ckpt=item.ckpt,
        sidecar=sidecar,
        warnings=metadata_warnings(meta),
    )
    if item.ckpt is not None:
        # A valid sidecar does not make a truncated checkpoint loadable: the reader of a query's
        # answer must never be handed one (Lightning #688 resumed from such files).
        from ckpt_index.sources.checkpoint.reader import check_integrity

        broken = check_integrity(path)
        if broken is None and options.inspect:
            broken, unsafe = _inspect(path)
            record.columns["unsafe_globals"] = unsafe
        if broken is not None:
            record.columns.update(status="unreadable", error=broken)
            return record, broken
    return record, None


def _inspect(path: str) -> tuple[str | None, str | None]:
    """(why the checkpoint cannot be read, or None; its ``unsafe_globals`` as JSON)."""
    import json

    from ckpt_index.sources.checkpoint.reader import CheckpointReadError, read_checkpoint

    try:
        contents = read_checkpoint(path)
    except CheckpointReadError as exc:
        return exc.reason, None
    return None, json.dumps(contents.unsafe_globals)


def build_record_safely(
    path: str, item: Found, racy_after_ns: int, options: SyncOptions | None = None
) -> tuple[Record, str | None]:
    """:func:`build_record`, with any failure turned into this file's status and reason."""
    try:
        return build_record(path, item, racy_after_ns, options)
    except Exception as exc:  # noqa: BLE001 - one file's failure must not stop a sync
        reason = one_line(f"cannot read metadata: {exc.__class__.__name__}: {exc}")
        return failed_record(path, item, reason), reason


def failed_record(path: str, item: Found, reason: str, *, checkpoint: bool = False) -> Record:
    """The row of a file whose reading failed: ``unreadable`` when it was the checkpoint (or
    ``checkpoint``: a worker reading it failed), else ``invalid`` (the sidecar)."""
    record = record_without_metadata(
        checkpoint_path=path,
        sidecar_path=item.sidecar_path,
        ckpt=item.ckpt,
        sidecar=item.sidecar,
        error=reason,
    )
    if item.sidecar_path is None or (checkpoint and item.ckpt is not None):
        record.columns["status"] = "unreadable"
    return record


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


_ONLINE_ENGINES: dict[str, Engine] = {}


def _online_engine(options: SyncOptions) -> Engine | None:
    """The engine W&B API answers are cached through; a worker opens its own from the URL."""
    if options.engine is not None or options.db_url is None:
        return options.engine
    engine = _ONLINE_ENGINES.get(options.db_url)
    if engine is None:
        from ckpt_index.index.engine import open_engine

        engine = _ONLINE_ENGINES[options.db_url] = open_engine(options.db_url)
    return engine


def _wandb_cache(options: SyncOptions) -> AnswerCache | None:
    """The index's ``wandb_run_cache`` as the cache of W&B API answers (``wandb_online``), or
    None: without ``wandb_online`` or without an index. The index's modules (and SQLAlchemy)
    are imported only then, so a worker that never asks the API does not load them."""
    if not options.wandb_online:
        return None
    engine = _online_engine(options)
    if engine is None:
        return None
    from ckpt_index.index.store import WandbApiCache

    return WandbApiCache(engine)


def item_args(item: Found) -> tuple[Any, ...]:
    return (
        tuple(item.ckpt) if item.ckpt else None,
        item.sidecar_path,
        tuple(item.sidecar) if item.sidecar else None,
    )


def item_from_args(ckpt: Any, sidecar_path: str | None, sidecar: Any) -> Found:
    item = Found()
    item.ckpt = FileState(*ckpt) if ckpt else None
    item.sidecar_path = sidecar_path
    item.sidecar = FileState(*sidecar) if sidecar else None
    return item


def checked_record(
    path: str, item: Found, record: Record, reason: str | None
) -> tuple[Record, str | None]:
    """``record`` through the boundary check (:func:`~ckpt_index.index.boundary.check_record`): the
    same row on every backend; a row it turns invalid carries its reason."""
    try:
        checked = check_record(record)
    except UnstorableRecord as exc:  # unreachable for scanned paths; contained regardless
        checked = failed_record(path, item, one_line(str(exc)))
    if checked.columns["status"] != record.columns["status"]:
        reason = checked.columns["error"]
    return checked, reason


# ---------------------------------------------------------------------------------------------
# The parsing worker's task (run by name by ckpt_index.isolation.pool)

#: Modules build_record imports lazily: each worker imports them before its memory ceiling is
#: set, so that the ceiling is the file's alone.
WORKER_IMPORTS = ("ckpt_index.sources.merge", "ckpt_index.sources.checkpoint.reader")


def build_record_task(
    path: str, item: tuple[Any, ...], racy_after_ns: int, options: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, float], str | None, bytes | None, str | None]:
    """:func:`build_record_safely` and the boundary check, in a parsing worker, as plain data:
    ``item`` from :func:`item_args`, ``options`` from :meth:`SyncOptions.for_worker`."""
    found = item_from_args(*item)
    record, reason = checked_record(
        path, found, *build_record_safely(path, found, racy_after_ns, SyncOptions(**options))
    )
    packed = pack_params(record.params, record.params_digest)
    return record.columns, record.metrics, reason, packed, record.params_digest
