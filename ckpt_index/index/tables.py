"""The index tables as SQLAlchemy Core. Column names are interface: users query them with
``ckpt-index sql``, so a name never changes without a new schema revision.

``checkpoints`` holds one row per checkpoint (or orphan sidecar) with flat columns named like the
JSON fields of ``ckpt-index query --format json``; ``checkpoint_metrics`` holds every metric by
name. Alembic owns the schema: change a table only together with a new revision (a test compares
these tables with the migrations).

Core tables rather than ORM classes on the hot paths: importing the ORM costs a query process
a third of its time. ``ckpt_index.index.models`` maps typed ORM classes onto these tables.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

#: Indexes a revision creates on one backend only, which the tables below leave out (SQLAlchemy
#: cannot declare them for one dialect): on PostgreSQL, ``ix_checkpoints_hmean_desc`` serves
#: ``ORDER BY hmean DESC NULLS LAST`` (revision 0008).
BACKEND_ONLY_INDEXES = frozenset({"ix_checkpoints_hmean_desc"})


def include_object(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    """alembic's ``include_object`` hook: compare everything but the backend-only indexes."""
    return not (type_ == "index" and name in BACKEND_ONLY_INDEXES)


def _text(name: str, **kw) -> Column:
    return Column(name, String, nullable=kw.pop("nullable", True), **kw)


checkpoints = Table(
    "checkpoints",
    metadata,
    Column("id", Integer, primary_key=True),
    # The machine (host name or CKPT_INDEX_LOCATION) whose filesystem holds checkpoint_path.
    Column("location", String, nullable=False, server_default=""),
    # Bytewise on every backend: sync selects the rows under a root with a range on the path.
    Column(
        "checkpoint_path",
        String().with_variant(String(collation="C"), "postgresql"),
        nullable=False,
    ),
    _text("sidecar_path"),
    _text("exp_name", index=True),
    _text("architecture", index=True),
    _text("encoder", index=True),
    Column("encoder_pretrained", Boolean),
    Column("encoder_frozen", Boolean),
    _text("decoder"),
    _text("head"),
    _text("loss"),
    Column("epoch", Integer, index=True),
    Column("global_step", BigInteger),
    _text("training_phase"),
    Column("max_epochs", Integer),
    Column("precision", Float),
    Column("recall", Float),
    Column("hmean", Float, index=True),
    Column("validation_loss", Float),
    _text("monitor"),
    _text("mode"),
    Column("save_top_k", Integer),
    Column("save_last", Boolean),
    _text("created_at"),
    _text("hydra_config_path"),
    _text("wandb_run_id"),
    # Where the row came from: sidecar, checkpoint, hydra, wandb, path, state_dict, or none.
    _text("source", nullable=False),
    # valid | invalid (sidecar rejected) | inferred (fallbacks) | unreadable | missing
    _text("status", nullable=False, index=True),
    Column("error", Text),
    Column("warnings", Text),
    Column("checkpoint_exists", Boolean, nullable=False),
    # File state the row was built from; an unchanged size and mtime means nothing to re-read.
    Column("ckpt_size", BigInteger),
    Column("ckpt_mtime_ns", BigInteger),
    Column("sidecar_size", BigInteger),
    Column("sidecar_mtime_ns", BigInteger),
    # The whole validated sidecar as JSON, for `show` and for fields without a column.
    Column("metadata_json", Text),
    # For rows filled from fallbacks: JSON object field -> source it came from.
    Column("inferred_fields", Text),
    _text("indexed_at", nullable=False),
    # JSON list of the pickle globals torch.load(weights_only=True) would refuse; NULL: not read.
    Column("unsafe_globals", Text),
    # The sidecar is older than the checkpoint beside it (the checkpoint was replaced after it).
    Column("stale", Boolean),
    # Why this row's directory could not be listed at the last sync (the row was kept, not pruned).
    Column("scan_error", Text),
    # JSON list of the absolute paths of the symbolic and hard links to this checkpoint (a
    # ``last.ckpt`` link, ``best-*`` links); NULL: none. A link never has a row of its own.
    Column("aliases", Text),
    # A ``last*.ckpt`` that is a byte copy of another checkpoint beside it (loses ties to it).
    Column("is_last", Boolean),
    # The row's hyperparameters (``param_sets``); NULL: none known. Checkpoints with the same
    # parameters (every checkpoint of a run) share one set. ``checkpoint_params`` is the view.
    Column("param_set_id", Integer, ForeignKey("param_sets.id"), index=True),
    # The sidecar says ``pinned: true`` (``ckpt-index pin``): ``gc`` never deletes it. NULL: no.
    Column("pinned", Boolean),
    # Unique indexes rather than UNIQUE constraints: a later revision can replace an index on
    # SQLite without rebuilding the table (which would cascade-delete the metrics).
    Index("ux_checkpoints_location_checkpoint_path", "location", "checkpoint_path", unique=True),
    Index("ix_checkpoints_checkpoint_path", "checkpoint_path"),
    # The web page's facet counts: one scan of a narrow index rather than the wide table.
    Index(
        "ix_checkpoints_facets",
        "exp_name",
        "architecture",
        "encoder",
        "training_phase",
        "status",
        "source",
        "checkpoint_exists",
    ),
)

checkpoint_metrics = Table(
    "checkpoint_metrics",
    metadata,
    Column(
        "checkpoint_id", Integer, ForeignKey("checkpoints.id", ondelete="CASCADE"), primary_key=True
    ),
    Column("name", String, primary_key=True),
    Column("value", Float, nullable=False),
    Index("ix_checkpoint_metrics_name_value", "name", "value"),
)

# Hyperparameter sets, stored once per distinct content (``digest``): a sweep of 100 runs with 10
# checkpoints each stores 100 sets, not 1,000 copies. Rows reach them by checkpoints.param_set_id.
param_sets = Table(
    "param_sets",
    metadata,
    Column("id", Integer, primary_key=True),
    # blake2b of the set's entries (ckpt_index.hyperparams.digest); one set per content.
    Column("digest", String, nullable=False),
    Column("size", Integer, nullable=False),
    Index("ux_param_sets_digest", "digest", unique=True),
)

# One hyperparameter of a set, by flattened dotted name (``model.optimizer.lr``). Numbers are in
# ``numeric_value`` (compared as numbers) and every non-null value's text in ``text_value``
# (compared as text); ``value_type`` tells them apart (int, float, bool, str, null, json).
param_values = Table(
    "param_values",
    metadata,
    Column(
        "param_set_id", Integer, ForeignKey("param_sets.id", ondelete="CASCADE"), primary_key=True
    ),
    Column("name", String, primary_key=True),
    _text("value_type", nullable=False),
    Column("numeric_value", Float),
    # Bytewise on every backend, like checkpoint_path: `params.x < 'b'` and a sort by a text
    # parameter give the same order on SQLite and PostgreSQL whatever the server's locale.
    Column("text_value", Text().with_variant(Text(collation="C"), "postgresql")),
    # sidecar, checkpoint, hydra or wandb
    _text("source", nullable=False),
    # Set by a Hydra override (overrides.yaml): what a sweep varied.
    Column("overridden", Boolean, nullable=False),
    # param_set_id last: a filter reads the sets it selects from the index alone (no table
    # lookup per entry: 10,000 of them cost 30 ms on SQLite).
    Index("ix_param_values_name_numeric_value", "name", "numeric_value", "param_set_id"),
    Index("ix_param_values_name_text_value", "name", "text_value", "param_set_id"),
)

# Answers of the W&B API (--wandb-online), so a run is fetched once, not per sync.
wandb_run_cache = Table(
    "wandb_run_cache",
    metadata,
    Column("run_path", String, primary_key=True),  # entity/project/run_id
    _text("fetched_at", nullable=False),
    Column("ok", Boolean, nullable=False),
    Column("error", Text),
    Column("config_json", Text),
    Column("summary_json", Text),
    # JSON object: global step (as text) -> {metric: value} of the history rows at that step.
    Column("history_json", Text),
)

#: Flat view for notebooks: one row per (existing checkpoint, metric), long format.
METRICS_VIEW = "checkpoint_metrics_flat"
#: Every checkpoint's hyperparameters, one row per (checkpoint, name): the table users query.
PARAMS_VIEW = "checkpoint_params"
#: Flat view for notebooks: one row per (existing checkpoint, parameter) with its identity.
PARAMS_FLAT_VIEW = "checkpoint_params_flat"
