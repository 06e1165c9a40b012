"""The Python API: the same operations as the CLI, for notebooks and scripts."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection

from ckpt_index.index.engine import (
    check_unlocked_read,
    disposing,
    is_sqlite,
    open_engine,
    resolve_db_url,
)
from ckpt_index.index.readonly import install_read_guard, read_only_engine
from ckpt_index.query.spec import QuerySpec, run_query
from ckpt_index.sync.roots import Progress, SyncSummary, sync_roots

PathLike = str | os.PathLike[str]


def sync_index(
    roots: PathLike | Iterable[PathLike],
    db: PathLike | None = None,
    progress: Progress | None = None,
    **options: Any,
) -> SyncSummary:
    """Sync the index with the files under ``roots`` (one path or several).

    ``options`` go to :func:`ckpt_index.sync.roots.sync_roots` (``infer``, ``wandb_online``,
    ``location``). The name is not ``sync``: that is the package ``ckpt_index.sync``.
    """
    if isinstance(roots, (str, os.PathLike)):
        roots = [roots]
    with disposing(open_engine(db)) as engine:
        return sync_roots(engine, roots, progress=progress, **options)


def query_index(db: PathLike | None = None, **spec: Any) -> list[dict[str, Any]]:
    """Query records: ``query_index(best_by="hmean", encoder="resnet50")`` (QuerySpec's fields).

    Each record is the JSON row of ``ckpt-index query --format json``: its fields, ``metrics``
    and ``params`` (``{dotted name: value}``, ``{}`` when none; checkpoints of one run share one
    mapping, so copy it before changing it). Never writes: an index at an older revision raises
    :class:`~ckpt_index.index.migrate.IndexOutdatedError` (run ``ckpt-index db upgrade``).
    """
    guard = install_read_guard if is_sqlite(resolve_db_url(db)) else None
    with disposing(open_engine(db, readonly=True, on_connect=guard)) as engine:
        with engine.connect() as conn:
            records = run_query(conn, QuerySpec(**spec), params=True)
        check_unlocked_read(engine)
        return records


def connect(db: PathLike | None = None) -> Connection:
    """A read-only SQLAlchemy connection to the index, e.g. for ``pandas.read_sql(sql, conn)``.

    Close it when done (``with ckpt_index.connect() as conn: ...``).
    """
    return read_only_engine(db).connect()


# Inside this module the short names are unambiguous (``from ckpt_index import api;
# api.sync(...)``); on the package they would be shadowed by the submodules ckpt_index.sync and
# ckpt_index.query.
sync = sync_index
query = query_index


def read_checkpoint(path: PathLike, *, isolated: bool = True, limits: Any = None) -> Any:
    """What a checkpoint holds besides its weights (epoch, hparams, callback states, ...).

    Nothing in the file is executed and no tensor is read. By default the file is read by a
    worker process under a memory ceiling and a time budget (``limits``: an
    :class:`ckpt_index.isolation.pool.Limits`), so a hostile file costs only this call, which
    raises :class:`~ckpt_index.sources.checkpoint.reader.CheckpointReadError` with the reason;
    ``raw`` is then plain data. ``isolated=False`` reads in this process (faster; for files you
    trust).
    """
    from ckpt_index.sources.checkpoint import reader as checkpoint_reader

    if isolated:
        return checkpoint_reader.read_checkpoint_isolated(path, limits)
    return checkpoint_reader.read_checkpoint(path)
