"""Turning metadata into index rows, and index rows into the records users see.

A :class:`Record` is what the store writes: the flat column values of one ``checkpoints`` row plus
its metrics by name. The same shape serves sync, and later the training callback and fallbacks.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import pickle
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from ckpt_index.hyperparams import Param, digest, flatten, override_names
from ckpt_index.vocabulary import CANONICAL_METRICS, UNKNOWN

if TYPE_CHECKING:  # the query path must not pay for importing pydantic
    from ckpt_index.sidecar.schema import CheckpointMetadataV1


#: The columns that describe the model past its encoder, the training and the checkpointing, in
#: the order both lists below give them.
_TRAINING_FIELDS = (
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
)

#: Every metadata column of ``checkpoints``, emptied for a row without usable metadata.
METADATA_COLUMNS = (
    "exp_name",
    "architecture",
    "encoder",
    "encoder_pretrained",
    "encoder_frozen",
    *_TRAINING_FIELDS,
    "hydra_config_path",
    "wandb_run_id",
    "metadata_json",
    "warnings",
    "error",
    "inferred_fields",
)

#: The fields of a JSON query result, in order, before ``metrics`` (a result names every field,
#: null when unknown, so that consumers see one shape).
OUTPUT_FIELDS = (
    "location",
    "checkpoint_path",
    "sidecar_path",
    "exp_name",
    "architecture",
    "encoder",
    *_TRAINING_FIELDS,
    # The checkpoint file's size in bytes when it was indexed (the table shows it as "size").
    "ckpt_size",
    # Absolute paths of the symbolic and hard links to this checkpoint (a list, [] when none).
    "aliases",
    # A last*.ckpt that is a byte copy of another checkpoint beside it (loses ties to that one).
    "is_last",
    # The sidecar says ``pinned: true`` (``ckpt-index pin``): gc never deletes it (a bool).
    "pinned",
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
    #: Hyperparameters by flattened name (``ckpt_index.hyperparams``).
    params: dict[str, Param] = field(default_factory=dict)
    #: ``hyperparams.digest`` of ``params`` (computed where the record is built: in a worker).
    params_digest: str | None = None

    def with_digest(self) -> Record:
        """This record, with ``params_digest`` set when it has parameters."""
        if self.params and self.params_digest is None:
            self.params_digest = digest(self.params.values())
        return self

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
        # Set by a sync (or the callback) that sees a last*.ckpt copy. ``aliases`` is not set
        # here: a row rewritten from its files alone keeps the links a sync or callback listed.
        "is_last": False,
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
    params, param_warnings, params_digest = _sidecar_params_digest(meta)
    if param_warnings:
        warnings = [*(warnings or []), *param_warnings]
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
        "monitor": _known(ckpting.monitor) if ckpting else None,
        "mode": ckpting.mode if ckpting else None,
        "save_top_k": ckpting.save_top_k if ckpting else None,
        "save_last": ckpting.save_last if ckpting else None,
        "created_at": meta.created_at,
        "hydra_config_path": meta.hydra_config_path,
        "wandb_run_id": meta.wandb_run_id,
        "pinned": bool(meta.pinned),
        "source": source,
        "status": "valid",
        "error": None,
        "warnings": "; ".join(warnings) if warnings else None,
        "metadata_json": meta.model_dump_json(),  # pydantic-core serialises in Rust
        "inferred_fields": None,
        "indexed_at": now_iso(),
        **_state_columns(ckpt, sidecar),
    }
    return Record(columns, metrics_of(meta), params, params_digest)


def sidecar_params(meta: CheckpointMetadataV1) -> tuple[dict[str, Param], list[str]]:
    """A sidecar's ``hyperparameters``, flattened; names its ``hydra_overrides`` set are marked."""
    params, warnings, _ = _sidecar_params_digest(meta)
    return params, warnings


#: (pickled hyperparameters, overrides) -> (params, warnings, digest): the sidecars of a run
#: repeat one config, flattened and hashed once per process. Bounded.
_FLATTENED: dict[tuple[bytes, tuple[str, ...]], tuple[dict[str, Param], list[str], str | None]] = {}
_MAX_FLATTENED = 256


def _sidecar_params_digest(
    meta: CheckpointMetadataV1,
) -> tuple[dict[str, Param], list[str], str | None]:
    """:func:`sidecar_params` and the parameters' digest, remembered per config.

    The key is the config pickled (a few microseconds): equal bytes load as equal values of
    the same types (``1``, ``1.0``, ``True`` and ``'1'`` differ), so equal keys flatten alike.
    The cached parameters are shared: nobody changes them.
    """
    if not meta.hyperparameters:
        return {}, [], None
    overrides = tuple(meta.hydra_overrides or ())
    try:
        key = (pickle.dumps(meta.hyperparameters, pickle.HIGHEST_PROTOCOL), overrides)
    except Exception:  # noqa: BLE001 (a value pickle refuses: flatten without the memo)
        params, warnings = flatten(
            meta.hyperparameters, "sidecar", overridden=override_names(list(overrides))
        )
        return params, warnings, digest(params.values()) if params else None
    found = _FLATTENED.get(key)
    if found is None:
        params, warnings = flatten(
            meta.hyperparameters, "sidecar", overridden=override_names(list(overrides))
        )
        found = (params, warnings, digest(params.values()) if params else None)
        if len(_FLATTENED) >= _MAX_FLATTENED:
            _FLATTENED.clear()
        _FLATTENED[key] = found
    return found[0], list(found[1]), found[2]


#: digest -> the pickled parameters a worker sends, and back (the sidecars of a run share one
#: set: it is pickled once in the worker and loaded once in the sync). Bounded.
_PACKED: dict[str, bytes] = {}
_UNPACKED: dict[str, dict[str, Param]] = {}
_MAX_PACKED = 64


def pack_params(params: dict[str, Param], params_digest: str | None) -> bytes | None:
    """``params`` as bytes for a worker's reply (one bytes object pickles as a copy)."""
    if not params or params_digest is None:
        return None
    packed = _PACKED.get(params_digest)
    if packed is None:
        packed = pickle.dumps(params, pickle.HIGHEST_PROTOCOL)
        if len(_PACKED) >= _MAX_PACKED:
            _PACKED.clear()
        _PACKED[params_digest] = packed
    return packed


def unpack_params(packed: bytes | None, params_digest: str | None) -> dict[str, Param]:
    """The parameters :func:`pack_params` packed (shared between records of the same set)."""
    if packed is None or params_digest is None:
        return {}
    params = _UNPACKED.get(params_digest)
    if params is None:
        params = pickle.loads(packed)  # noqa: S301 (bytes from our own worker)
        if len(_UNPACKED) >= _MAX_PACKED:
            _UNPACKED.clear()
        _UNPACKED[params_digest] = params
    return params


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
        # Only a valid sidecar pins (false, not NULL: `--where pinned = false` finds the row).
        pinned=False,
        error=error,
        indexed_at=now_iso(),
        **_state_columns(ckpt, sidecar),
    )
    return Record(columns)


def _known(name: str | None) -> str | None:
    # UNKNOWN is the seeds' placeholder for a name no source gave; the index shows it as empty.
    return None if name is None or name.strip().lower() in ("", UNKNOWN) else name


def _finite(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


def output_record(
    row: dict[str, Any], metrics: dict[str, float], params: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One query result as JSON: :data:`OUTPUT_FIELDS`, then ``metrics`` sorted by name, then
    ``params`` (``{dotted name: value}``) when given."""
    out = {name: row.get(name) for name in OUTPUT_FIELDS}
    for name in ("checkpoint_exists", "save_last", "is_last"):
        if out[name] is not None:
            out[name] = bool(out[name])
    out["pinned"] = bool(out["pinned"])  # NULL (a row indexed before revision 0008): not pinned
    out["aliases"] = json.loads(out["aliases"]) if out["aliases"] else []
    out["metrics"] = dict(sorted(metrics.items()))
    if params is not None:
        out["params"] = params
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
    params = getattr(inferred, "params", None) or {}
    columns.update(
        checkpoint_path=inferred.checkpoint_path,
        sidecar_path=None,
        source=inferred.source,
        status="unreadable" if inferred.unreadable else "inferred",
        pinned=False,
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
    return Record(columns, metrics, params).with_digest()
