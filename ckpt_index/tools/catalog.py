"""The catalog API for applications (a checkpoint picker, a dashboard): ``build_catalog(dir)``.

It syncs incrementally and answers from the index, so a UI that rebuilds its checkpoint list on
every page load pays for a directory walk and one query, not for reading sidecars.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from dataclasses import dataclass, field, fields
from typing import Any

from sqlalchemy import select

from ckpt_index.index.engine import disposing, open_engine, resolve_location
from ckpt_index.index.records import output_record
from ckpt_index.index.store import path_range
from ckpt_index.index.tables import checkpoints
from ckpt_index.query.params import params_of_sets
from ckpt_index.query.spec import fetch_metrics
from ckpt_index.sync.roots import sync_roots
from ckpt_index.vocabulary import UNKNOWN


@dataclass
class CheckpointCatalogEntry:
    checkpoint_path: str
    exp_name: str | None
    architecture: str | None
    encoder: str | None
    epoch: int | None
    global_step: int | None
    precision: float | None
    recall: float | None
    hmean: float | None
    created_at: str | None
    status: str
    source: str
    metrics: dict[str, float]
    #: Hyperparameters by dotted name (``{"model.optimizer.lr": 0.01}``), ``{}`` when none;
    #: entries of one run share one mapping.
    params: dict[str, Any] = field(default_factory=dict)

    def to_display_option(self) -> str:
        """``dbnet · resnet50 · exp (ep10 • hmean 0.843 • prec 0.854 • rec 0.832 •
        20251018_1432)``; a name no source gave shows as ``unknown``."""
        head = " · ".join(x or UNKNOWN for x in (self.architecture, self.encoder, self.exp_name))
        details = []
        if self.epoch is not None:
            details.append(f"ep{self.epoch}")
        for label, value in (("hmean", self.hmean), ("prec", self.precision), ("rec", self.recall)):
            if value is not None:
                details.append(f"{label} {value:.3f}")
        stamp = _stamp(self.created_at)
        if stamp:
            details.append(stamp)
        return f"{head} ({' • '.join(details)})" if details else head


def _stamp(created_at: str | None) -> str | None:
    if not created_at:
        return None
    try:
        return _dt.datetime.fromisoformat(created_at).strftime("%Y%m%d_%H%M")
    except ValueError:
        return None


@dataclass
class CheckpointCatalog:
    entries: list[CheckpointCatalogEntry]
    total_count: int
    metadata_coverage_percent: float
    catalog_build_time_seconds: float


def build_catalog(outputs_dir: str | os.PathLike[str], db: Any = None) -> CheckpointCatalog:
    """Sync ``outputs_dir`` into the index and list its checkpoints, best hmean first.

    An ``outputs_dir`` that does not exist (a fresh checkout, before any training run) is an
    empty catalog, and no index is opened or created for it.
    """
    started = time.perf_counter()
    root = os.path.abspath(os.fspath(outputs_dir))
    if not os.path.exists(root):
        return CheckpointCatalog([], 0, 0.0, time.perf_counter() - started)
    with disposing(open_engine(db)) as engine:
        sync_roots(engine, [root])
        lo, hi = path_range(root)
        c = checkpoints.c
        stmt = (
            select(checkpoints)
            .where(
                c.location == resolve_location(),
                c.checkpoint_path >= lo,
                c.checkpoint_path < hi,
                c.checkpoint_exists.is_(True),
            )
            .order_by(c.hmean.desc().nulls_last(), c.epoch.desc(), c.checkpoint_path)
        )
        with engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(stmt)]
            metrics = fetch_metrics(conn, [r["id"] for r in rows])
            sets = params_of_sets(conn, [r["param_set_id"] for r in rows])
    names = [f.name for f in fields(CheckpointCatalogEntry)]
    entries = []
    for row in rows:
        set_id = row["param_set_id"]
        record = output_record(row, metrics[row["id"]], sets[set_id] if set_id is not None else {})
        entries.append(CheckpointCatalogEntry(**{name: record[name] for name in names}))
    with_metadata = sum(e.status == "valid" for e in entries)
    return CheckpointCatalog(
        entries=entries,
        total_count=len(entries),
        metadata_coverage_percent=100.0 * with_metadata / len(entries) if entries else 0.0,
        catalog_build_time_seconds=time.perf_counter() - started,
    )
