"""The index tables (SPEC section 5). Column names are interface: notebooks query them directly.

``checkpoints`` holds one row per checkpoint (or orphan sidecar) with flat columns named like the
JSON fields of ``ckpt-index query --format json``; ``checkpoint_metrics`` holds every metric by
name. Alembic owns the schema: change these models only together with a new revision.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Float, ForeignKey, Index, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    # Unique indexes rather than UNIQUE constraints: a later revision can replace an index on
    # SQLite without rebuilding the table (which would cascade-delete the metrics).
    __table_args__ = (
        Index("ux_checkpoints_location_checkpoint_path", "location", "checkpoint_path", unique=True),
        Index("ix_checkpoints_checkpoint_path", "checkpoint_path"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    # The machine (host name or CKPT_INDEX_LOCATION) whose filesystem holds checkpoint_path.
    location: Mapped[str] = mapped_column(String, server_default="")
    checkpoint_path: Mapped[str] = mapped_column(String)
    sidecar_path: Mapped[str | None] = mapped_column(String)

    exp_name: Mapped[str | None] = mapped_column(String, index=True)
    architecture: Mapped[str | None] = mapped_column(String, index=True)
    encoder: Mapped[str | None] = mapped_column(String, index=True)
    encoder_pretrained: Mapped[bool | None]
    encoder_frozen: Mapped[bool | None]
    decoder: Mapped[str | None] = mapped_column(String)
    head: Mapped[str | None] = mapped_column(String)
    loss: Mapped[str | None] = mapped_column(String)

    epoch: Mapped[int | None] = mapped_column(index=True)
    global_step: Mapped[int | None] = mapped_column(BigInteger)
    training_phase: Mapped[str | None] = mapped_column(String)
    max_epochs: Mapped[int | None]

    precision: Mapped[float | None] = mapped_column(Float)
    recall: Mapped[float | None] = mapped_column(Float)
    hmean: Mapped[float | None] = mapped_column(Float, index=True)
    validation_loss: Mapped[float | None] = mapped_column(Float)

    monitor: Mapped[str | None] = mapped_column(String)
    mode: Mapped[str | None] = mapped_column(String)
    save_top_k: Mapped[int | None]
    save_last: Mapped[bool | None]

    created_at: Mapped[str | None] = mapped_column(String)
    hydra_config_path: Mapped[str | None] = mapped_column(String)
    wandb_run_id: Mapped[str | None] = mapped_column(String)

    # Where the row came from: "sidecar", or "none" for a checkpoint with no usable metadata.
    source: Mapped[str] = mapped_column(String)
    # "valid", "invalid" (sidecar rejected; see error) or "missing" (no sidecar).
    status: Mapped[str] = mapped_column(String, index=True)
    error: Mapped[str | None] = mapped_column(Text)
    warnings: Mapped[str | None] = mapped_column(Text)
    checkpoint_exists: Mapped[bool]

    # File state the row was built from; an unchanged size and mtime means nothing to re-read.
    ckpt_size: Mapped[int | None] = mapped_column(BigInteger)
    ckpt_mtime_ns: Mapped[int | None] = mapped_column(BigInteger)
    sidecar_size: Mapped[int | None] = mapped_column(BigInteger)
    sidecar_mtime_ns: Mapped[int | None] = mapped_column(BigInteger)

    # The whole validated sidecar as JSON, for `show` and for fields without a column.
    metadata_json: Mapped[str | None] = mapped_column(Text)
    # For rows filled from fallbacks: JSON object field -> source it came from.
    inferred_fields: Mapped[str | None] = mapped_column(Text)
    indexed_at: Mapped[str] = mapped_column(String)


class CheckpointMetric(Base):
    __tablename__ = "checkpoint_metrics"
    __table_args__ = (Index("ix_checkpoint_metrics_name_value", "name", "value"),)

    checkpoint_id: Mapped[int] = mapped_column(
        ForeignKey("checkpoints.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String, primary_key=True)
    value: Mapped[float] = mapped_column(Float)


class WandbRunCache(Base):
    """Answers of the W&B API (``--wandb-online``), so a run is fetched once, not per sync."""

    __tablename__ = "wandb_run_cache"

    run_path: Mapped[str] = mapped_column(String, primary_key=True)  # entity/project/run_id
    fetched_at: Mapped[str] = mapped_column(String)
    ok: Mapped[bool]
    error: Mapped[str | None] = mapped_column(Text)
    config_json: Mapped[str | None] = mapped_column(Text)
    summary_json: Mapped[str | None] = mapped_column(Text)
    # JSON object: global step (as text) -> {metric: value} of the history rows at that step.
    history_json: Mapped[str | None] = mapped_column(Text)


checkpoints = Checkpoint.__table__
checkpoint_metrics = CheckpointMetric.__table__

#: Flat view for notebooks: one row per (existing checkpoint, metric), long format.
METRICS_VIEW = "checkpoint_metrics_flat"
METRICS_VIEW_SQL = f"""
CREATE VIEW {METRICS_VIEW} AS
SELECT c.id AS checkpoint_id, c.location, c.checkpoint_path, c.exp_name, c.architecture, c.encoder,
       c.epoch, c.global_step, c.training_phase, m.name AS metric, m.value
FROM checkpoints c JOIN checkpoint_metrics m ON m.checkpoint_id = c.id
WHERE c.checkpoint_exists
"""
