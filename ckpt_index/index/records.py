"""Turning metadata into index rows, and index rows into the records users see.

A :class:`Record` is what the store writes: the flat column values of one ``checkpoints`` row plus
its metrics by name. The same shape serves sync, and later the training callback and fallbacks.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from ckpt_index.storable import (
    INT64_MAX,
    INT64_MIN,
    INT_RANGES,
    MAX_METRIC_NAME,
    clean_text,
    finite_float,
    int_problem,
    show,
    text_problem,
)
from ckpt_index.vocabulary import MODES, PHASES

if TYPE_CHECKING:  # the query path must not pay for importing pydantic
    from ckpt_index.sidecar.schema import CheckpointMetadataV1

#: Metrics that have their own column as well as a row in checkpoint_metrics.
CANONICAL_METRICS = ("precision", "recall", "hmean", "validation_loss")

#: Every metadata column of ``checkpoints``, emptied for a row without usable metadata.
METADATA_COLUMNS = (
    "exp_name",
    "architecture",
    "encoder",
    "encoder_pretrained",
    "encoder_frozen",
    "decoder",
    "head",
    "loss",
    "epoch",
    "global_step",
    "training_phase",
    "max_epochs",
    "precision",
    "recall",
    "hmean",
    "validation_loss",
    "monitor",
    "mode",
    "save_top_k",
    "save_last",
    "created_at",
    "hydra_config_path",
    "wandb_run_id",
    "metadata_json",
    "warnings",
    "error",
    "inferred_fields",
)

#: The fields of a JSON query result, in order (SPEC section 7), before ``metrics``.
OUTPUT_FIELDS = (
    "location",
    "checkpoint_path",
    "sidecar_path",
    "exp_name",
    "architecture",
    "encoder",
    "decoder",
    "head",
    "loss",
    "epoch",
    "global_step",
    "training_phase",
    "max_epochs",
    "precision",
    "recall",
    "hmean",
    "validation_loss",
    "monitor",
    "mode",
    "save_top_k",
    "save_last",
    "created_at",
    "hydra_config_path",
    "wandb_run_id",
    "source",
    "checkpoint_exists",
    "status",
    "error",
)


class FileState(NamedTuple):
    """Size and mtime of a file as seen by a sync (a tuple: a sync makes one per file)."""

    size: int
    #: ``None`` for a file seen inside the racy window: its row is re-read by the next sync.
    mtime_ns: int | None


@dataclass
class Record:
    columns: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def checkpoint_path(self) -> str:
        return self.columns["checkpoint_path"]


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def checkpoint_state_columns(ckpt: FileState | None) -> dict[str, Any]:
    """The columns describing the checkpoint file (a sync patches only these when it changes)."""
    return {
        "checkpoint_exists": ckpt is not None,
        "ckpt_size": ckpt.size if ckpt else None,
        "ckpt_mtime_ns": ckpt.mtime_ns if ckpt else None,
    }


#: A checkpoint modified this long after its sidecar was replaced after the sidecar was written
#: (the callback writes a sidecar milliseconds after its checkpoint; copies may reorder a little).
STALE_AFTER_NS = 2_000_000_000


def is_stale(ckpt: FileState | None, sidecar: FileState | None) -> bool:
    """Whether the sidecar is older than the checkpoint beside it (the checkpoint was replaced)."""
    if ckpt is None or sidecar is None or ckpt.mtime_ns is None or sidecar.mtime_ns is None:
        return False
    return ckpt.mtime_ns > sidecar.mtime_ns + STALE_AFTER_NS


def _state_columns(ckpt: FileState | None, sidecar: FileState | None) -> dict[str, Any]:
    return {
        **checkpoint_state_columns(ckpt),
        "sidecar_size": sidecar.size if sidecar else None,
        "sidecar_mtime_ns": sidecar.mtime_ns if sidecar else None,
        "stale": is_stale(ckpt, sidecar),
        # Set by a sync that could not list the row's directory; any rebuilt row clears it.
        "scan_error": None,
    }


def metrics_of(meta: CheckpointMetadataV1) -> dict[str, float]:
    """All metrics of a sidecar by name: additional_metrics, then the canonical ones over them."""
    values = {k: v for k, v in meta.metrics.additional_metrics.items() if math.isfinite(v)}
    for name in CANONICAL_METRICS:
        value = getattr(meta.metrics, name)
        if value is not None and math.isfinite(value):
            values[name] = float(value)
    return values


def record_from_metadata(
    meta: CheckpointMetadataV1,
    *,
    checkpoint_path: str,
    sidecar_path: str | None,
    ckpt: FileState | None,
    sidecar: FileState | None,
    source: str = "sidecar",
    warnings: list[str] | None = None,
) -> Record:
    model, training, ckpting = meta.model, meta.training, meta.checkpointing
    columns: dict[str, Any] = {
        "checkpoint_path": checkpoint_path,
        "sidecar_path": sidecar_path,
        "exp_name": _known(meta.exp_name),
        "architecture": _known(model.architecture),
        "encoder": _known(model.encoder.model_name),
        "encoder_pretrained": model.encoder.pretrained,
        "encoder_frozen": model.encoder.frozen,
        "decoder": _known(model.decoder.name) if model.decoder else None,
        "head": _known(model.head.name) if model.head else None,
        "loss": _known(model.loss.name) if model.loss else None,
        "epoch": training.epoch,
        "global_step": training.global_step,
        "training_phase": training.training_phase,
        "max_epochs": training.max_epochs,
        "precision": meta.metrics.precision,
        "recall": meta.metrics.recall,
        "hmean": meta.metrics.hmean,
        "validation_loss": _finite(meta.metrics.validation_loss),
        "monitor": ckpting.monitor if ckpting else None,
        "mode": ckpting.mode if ckpting else None,
        "save_top_k": ckpting.save_top_k if ckpting else None,
        "save_last": ckpting.save_last if ckpting else None,
        "created_at": meta.created_at,
        "hydra_config_path": meta.hydra_config_path,
        "wandb_run_id": meta.wandb_run_id,
        "source": source,
        "status": "valid",
        "error": None,
        "warnings": "; ".join(warnings) if warnings else None,
        "metadata_json": meta.model_dump_json(),  # pydantic-core serialises in Rust
        "inferred_fields": None,
        "indexed_at": now_iso(),
        **_state_columns(ckpt, sidecar),
    }
    return Record(columns, metrics_of(meta))


def record_without_metadata(
    *,
    checkpoint_path: str,
    sidecar_path: str | None,
    ckpt: FileState | None,
    sidecar: FileState | None,
    error: str | None,
) -> Record:
    """A row for a checkpoint with no sidecar (``missing``) or a rejected one (``invalid``)."""
    columns: dict[str, Any] = dict.fromkeys(METADATA_COLUMNS)
    columns.update(
        checkpoint_path=checkpoint_path,
        sidecar_path=sidecar_path,
        source="none",
        status="invalid" if error else "missing",
        error=error,
        indexed_at=now_iso(),
        **_state_columns(ckpt, sidecar),
    )
    return Record(columns)


def _known(name: str | None) -> str | None:
    # "unknown" is the seeds' placeholder for a name no source gave; the index shows it as empty.
    return None if name is None or name.strip().lower() in ("", "unknown") else name


def _finite(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


def output_record(row: dict[str, Any], metrics: dict[str, float]) -> dict[str, Any]:
    """The JSON shape of one query result (SPEC section 7)."""
    out = {name: row.get(name) for name in OUTPUT_FIELDS}
    for name in ("checkpoint_exists", "save_last"):
        if out[name] is not None:
            out[name] = bool(out[name])
    out["metrics"] = dict(sorted(metrics.items()))
    return out


def record_from_inferred(inferred, *, ckpt: FileState | None) -> Record:
    """A row for a checkpoint without a sidecar, from what the fallbacks found.

    ``status`` is ``inferred``, or ``unreadable`` (with the reason in ``error``) when the checkpoint
    itself could not be read; fields other sources gave are kept either way.
    """
    found = inferred.fields
    columns: dict[str, Any] = dict.fromkeys(METADATA_COLUMNS)
    columns.update({name: found.get(name) for name in METADATA_COLUMNS if name in found})
    for name in ("architecture", "encoder", "decoder", "head", "loss"):
        columns[name] = _known(columns[name])
    metrics = {k: v for k, v in inferred.metrics.items() if math.isfinite(v)}
    for name in CANONICAL_METRICS:
        if columns.get(name) is not None:
            metrics[name] = float(columns[name])
    columns.update(
        checkpoint_path=inferred.checkpoint_path,
        sidecar_path=None,
        source=inferred.source,
        status="unreadable" if inferred.unreadable else "inferred",
        error=inferred.unreadable,
        warnings="; ".join(inferred.warnings) or None,
        inferred_fields=json.dumps(inferred.sources, sort_keys=True, separators=(",", ":")),
        unsafe_globals=(
            json.dumps(inferred.unsafe_globals)
            if getattr(inferred, "unsafe_globals", None) is not None
            else None
        ),
        indexed_at=now_iso(),
        **_state_columns(ckpt, None),
    )
    return Record(columns, metrics)


# --------------------------------------------------------------------------------------------
# The boundary: every row is checked before it is written, whatever produced it.

_INT, _FLOAT, _BOOL, _TEXT, _CHOICE = "int", "float", "bool", "text", "choice"
#: The kind of each column of ``checkpoints`` a record sets (a test keeps it in step with tables).
COLUMN_KINDS: dict[str, str] = {
    **dict.fromkeys(
        (
            "location",
            "checkpoint_path",
            "sidecar_path",
            "source",
            "status",
            "indexed_at",
            "unsafe_globals",
            "scan_error",
        ),
        _TEXT,
    ),
    **dict.fromkeys(METADATA_COLUMNS, _TEXT),
    **dict.fromkeys(INT_RANGES, _INT),
    **dict.fromkeys(CANONICAL_METRICS, _FLOAT),
    **dict.fromkeys(
        ("encoder_pretrained", "encoder_frozen", "save_last", "checkpoint_exists", "stale"), _BOOL
    ),
    "mode": _CHOICE,
    "training_phase": _CHOICE,
}
_CHOICES = {
    "mode": frozenset(MODES),
    "training_phase": frozenset(PHASES),
}
#: Text a row carries about itself, repaired in any row rather than making it invalid.
_ROW_TEXT = frozenset({"error", "warnings", "inferred_fields", "indexed_at", "source", "status"})
#: Rows whose values a file vouches for: a bad value there makes the row invalid, never repaired.
_VOUCHED = frozenset({"valid"})


class UnstorableRecord(ValueError):
    """A record whose key (its checkpoint path) the index cannot hold."""


def check_record(record: Record) -> Record:
    """``record`` made storable, the same on every backend; ``record`` itself when it already is.

    Integer columns within their range (``storable.INT_RANGES``), floats finite, booleans bool,
    text ``str`` without NUL or lone surrogates, ``mode``/``training_phase`` among their choices;
    metric names ``str`` of at most ``MAX_METRIC_NAME`` characters with finite float values.

    - A row a file vouches for (``status == "valid"``: a sidecar, the training callback) with a
      bad metadata value becomes ``invalid``, with ``<column>: <problem>`` as its reason.
    - Any other row (inferred, unreadable, missing, invalid) is repaired: a bad value becomes
      None, bad text is cleaned (NUL dropped, lone surrogates become U+FFFD), and a warning says
      so. Bad metrics are dropped (or their names cleaned) with a warning, in any row.

    Raises:
        UnstorableRecord: ``checkpoint_path`` is not storable text (the caller should not have
            made a row for it; a sync refuses such names when it scans).
    """
    columns = record.columns
    bad = []
    kinds = COLUMN_KINDS
    # The common cases inline: the sync calls this on every row (see _fits for the whole rule).
    for name, value in columns.items():
        t = type(value)
        if t is str:
            if kinds.get(name) is _TEXT and "\x00" not in value and value.isascii():
                continue
        elif t is int:
            bounds = INT_RANGES.get(name)
            if bounds is not None and bounds[0] <= value <= bounds[1]:
                continue
        elif t is float:
            if kinds.get(name) is _FLOAT and value - value == 0.0:
                continue
        elif t is bool:
            if kinds.get(name) is _BOOL:
                continue
        if value is not None and not _fits(name, value):
            bad.append(name)
    metrics = record.metrics
    bad_metrics = [
        name
        for name, value in metrics.items()
        if not (
            type(name) is str
            and type(value) is float
            and value - value == 0.0
            and len(name) <= MAX_METRIC_NAME
            and "\x00" not in name
            and name.isascii()
        )
        and not _metric_fits(name, value)
    ]
    path = columns.get("checkpoint_path")
    if type(path) is not str or "checkpoint_path" in bad or "location" in bad:
        raise UnstorableRecord(f"checkpoint path {show(path)} is not storable text")
    if not bad and not bad_metrics:
        return record
    if columns.get("status") in _VOUCHED:
        for name in bad:
            if name in METADATA_COLUMNS and name not in _ROW_TEXT:
                return check_record(_invalid(record, f"{name}: {_problem(name, columns[name])}"))
    fixed = dict(columns)
    notes: list[str] = []
    for name in bad:
        value = columns[name]
        problem = _problem(name, value)
        repairable = type(value) is str and COLUMN_KINDS.get(name, _TEXT) is _TEXT
        fixed[name] = clean_text(value) if repairable else None
        if name not in _ROW_TEXT:  # repairing a warning need not be warned about
            notes.append(
                f"{name}: {problem}; {'cleaned' if fixed[name] is not None else 'not indexed'}"
            )
    kept = dict(metrics)
    for name in bad_metrics:
        value = kept.pop(name)
        number = finite_float(value)
        if type(name) is str and len(name) <= MAX_METRIC_NAME and number is not None:
            problem = text_problem(name)
            if problem is None:  # an int, or a float subclass such as numpy's: just a number
                kept[name] = number
                continue
            clean = clean_text(name)
            if clean not in kept and clean not in metrics:
                kept[clean] = number
                notes.append(f"metric {show(name)}: name {problem}; cleaned")
                continue
        notes.append(f"metric {show(name)}: {_metric_problem(name, value)}; not indexed")
    if notes:
        fixed["warnings"] = "; ".join(
            ([fixed["warnings"]] if fixed.get("warnings") else []) + notes
        )
    return Record(fixed, kept)


def _fits(name: str, value: Any) -> bool:
    kind = COLUMN_KINDS.get(name)
    t = type(value)
    if kind is _CHOICE:
        return t is str and value in _CHOICES[name]
    if kind is _TEXT or (kind is None and t is str):
        return t is str and "\x00" not in value and (value.isascii() or text_problem(value) is None)
    if kind is _INT:
        low, high = INT_RANGES[name]
        return t is int and low <= value <= high
    if kind is _FLOAT:
        return t is float and value - value == 0.0  # inf - inf and nan - nan are nan
    if kind is _BOOL:
        return t is bool
    # A column this module does not know (a newer revision's): judged by its value alone.
    if t is int:
        return INT64_MIN <= value <= INT64_MAX
    return t is bool or (t is float and value - value == 0.0)


def _problem(name: str, value: Any) -> str:
    kind = COLUMN_KINDS.get(name)
    if kind is _CHOICE:
        return f"{show(value)} is not one of {', '.join(sorted(_CHOICES[name]))}"
    if kind is _TEXT or (kind is None and type(value) is str):
        if type(value) is not str:
            return f"expected text, got {show(value)}"
        return text_problem(value) or "not storable text"
    if kind is _INT:
        return int_problem(value, INT_RANGES[name])
    if kind is _FLOAT:
        return f"{show(value)} is not a finite number"
    if kind is _BOOL:
        return f"expected true or false, got {show(value)}"
    if type(value) is int:
        return int_problem(value)
    return f"{show(value)} is not storable"


def _metric_fits(name: Any, value: Any) -> bool:
    return (
        type(name) is str
        and len(name) <= MAX_METRIC_NAME
        and "\x00" not in name
        and (name.isascii() or text_problem(name) is None)
        and type(value) is float
        and value - value == 0.0
    )


def _metric_problem(name: Any, value: Any) -> str:
    if type(name) is not str:
        return f"name is not text ({show(name)})"
    if len(name) > MAX_METRIC_NAME:
        return f"name longer than {MAX_METRIC_NAME} characters"
    if text_problem(name):
        return f"name {text_problem(name)}"
    return f"{show(value)} is not a finite number"


def _invalid(record: Record, reason: str) -> Record:
    """``record`` as a row whose sidecar was rejected: file state kept, metadata emptied."""
    columns = dict(record.columns)
    columns.update(dict.fromkeys(METADATA_COLUMNS), source="none", status="invalid", error=reason)
    return Record(columns)
