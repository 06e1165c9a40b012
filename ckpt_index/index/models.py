"""Typed ORM classes over the index tables, for code that prefers sessions to Core.

The tables themselves are defined once, in :mod:`ckpt_index.index.tables` (SQLAlchemy Core, so
that the CLI need not import the ORM); these classes map onto them and type their attributes::

    from sqlalchemy import select
    from sqlalchemy.orm import Session
    from ckpt_index import read_only_engine
    from ckpt_index.index.models import Checkpoint

    with Session(read_only_engine("ckpt_index.db")) as session:
        best = session.scalars(select(Checkpoint).order_by(Checkpoint.hmean.desc())).first()
"""

from __future__ import annotations

from sqlalchemy.orm import DeclarativeBase, Mapped

from ckpt_index.index import tables
from ckpt_index.index.tables import checkpoint_metrics, checkpoints, wandb_run_cache

__all__ = [
    "Base",
    "Checkpoint",
    "CheckpointMetric",
    "WandbRunCache",
    "checkpoints",
    "checkpoint_metrics",
    "wandb_run_cache",
]


class Base(DeclarativeBase):
    metadata = tables.metadata


class Checkpoint(Base):
    __table__ = checkpoints

    id: Mapped[int]
    location: Mapped[str]
    checkpoint_path: Mapped[str]
    sidecar_path: Mapped[str | None]
    exp_name: Mapped[str | None]
    architecture: Mapped[str | None]
    encoder: Mapped[str | None]
    encoder_pretrained: Mapped[bool | None]
    encoder_frozen: Mapped[bool | None]
    decoder: Mapped[str | None]
    head: Mapped[str | None]
    loss: Mapped[str | None]
    epoch: Mapped[int | None]
    global_step: Mapped[int | None]
    training_phase: Mapped[str | None]
    max_epochs: Mapped[int | None]
    precision: Mapped[float | None]
    recall: Mapped[float | None]
    hmean: Mapped[float | None]
    validation_loss: Mapped[float | None]
    monitor: Mapped[str | None]
    mode: Mapped[str | None]
    save_top_k: Mapped[int | None]
    save_last: Mapped[bool | None]
    created_at: Mapped[str | None]
    hydra_config_path: Mapped[str | None]
    wandb_run_id: Mapped[str | None]
    source: Mapped[str]
    status: Mapped[str]
    error: Mapped[str | None]
    warnings: Mapped[str | None]
    checkpoint_exists: Mapped[bool]
    ckpt_size: Mapped[int | None]
    ckpt_mtime_ns: Mapped[int | None]
    sidecar_size: Mapped[int | None]
    sidecar_mtime_ns: Mapped[int | None]
    metadata_json: Mapped[str | None]
    inferred_fields: Mapped[str | None]
    indexed_at: Mapped[str]
    unsafe_globals: Mapped[str | None]
    stale: Mapped[bool | None]
    scan_error: Mapped[str | None]
    aliases: Mapped[str | None]
    is_last: Mapped[bool | None]


class CheckpointMetric(Base):
    __table__ = checkpoint_metrics

    checkpoint_id: Mapped[int]
    name: Mapped[str]
    value: Mapped[float]


class WandbRunCache(Base):
    __table__ = wandb_run_cache

    run_path: Mapped[str]
    fetched_at: Mapped[str]
    ok: Mapped[bool]
    error: Mapped[str | None]
    config_json: Mapped[str | None]
    summary_json: Mapped[str | None]
    history_json: Mapped[str | None]
