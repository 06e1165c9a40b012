"""``ckpt-index convert``: write sidecars for checkpoints that have none, from the fallbacks.

A field is written only when a source gives it (``inferred_fields`` says which), never a schema
default as a fact: the encoder's ``pretrained`` / ``frozen`` and ModelCheckpoint's ``mode``,
``save_top_k`` and ``save_last`` come from the checkpoint's callback state, its hparams, the
Hydra config or the W&B run config, or are absent. The seed design's reader requires the
decoder, head and loss and the checkpointing section: a name it requires that no source gives is
written as ``unknown`` (the seeds' convention), which the index shows as empty. Epoch and global
step are never guessed: a checkpoint whose epoch no source gives is reported as failed.

The hyperparameters the fallbacks found (merged over the checkpoint's hparams, the Hydra config
and the W&B run config) are written as the sidecar's ``hyperparameters`` (schema 1.1), nested
again from their dotted names (:func:`nest_params`), with the run's ``hydra_overrides``: a sync
of the written sidecar indexes the same parameters the fallbacks gave.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ckpt_index import hyperparams
from ckpt_index.isolation.pool import Limits
from ckpt_index.sidecar.files import (
    CKPT_SUFFIX,
    SidecarError,
    dump_metadata,
    parse_sidecar_bytes,
    save_metadata,
    sidecar_path_for,
    validate_document,
)
from ckpt_index.sidecar.schema import CheckpointMetadataV1, format_validation_error
from ckpt_index.sources.config_fields import FLAG_FIELDS
from ckpt_index.sources.merge import Inferred, created_at_of, infer_metadata
from ckpt_index.storable import MAX_METRIC_NAME, clean_text, finite_float
from ckpt_index.vocabulary import CANONICAL_METRICS, MODES, UNKNOWN

log = logging.getLogger("ckpt_index.tools.convert")


class ConversionError(Exception):
    pass


@dataclass
class ConvertSummary:
    found: int = 0
    converted: int = 0
    skipped: int = 0
    failed: int = 0
    #: sidecars written (or that would be, in a dry run)
    written: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "found": self.found,
            "converted": self.converted,
            "skipped": self.skipped,
            "failed": self.failed,
            "written": self.written,
            "failures": [{"path": p, "reason": r} for p, r in self.failures],
        }


def find_checkpoints(directory: str | os.PathLike[str], *, recursive: bool = True) -> list[Path]:
    root = Path(directory)
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a directory")
    pattern = f"**/*{CKPT_SUFFIX}" if recursive else f"*{CKPT_SUFFIX}"
    return sorted(p for p in root.glob(pattern) if p.is_file())


def infer_checkpoint(path: Path, *, wandb_online: bool = False) -> Inferred:
    """What the fallbacks say about one checkpoint, read in this process (no isolation)."""
    return infer_metadata(path, wandb_online=wandb_online)


def infer_isolated(
    paths: list[Path],
    *,
    wandb_online: bool = False,
    limits: Limits | None = None,
) -> Iterator[tuple[Path, Inferred | None, str | None]]:
    """(path, what the fallbacks found, None) per path, in order, or (path, None, reason) when
    reading it crashed or exceeded a limit: each checkpoint is read by a worker process under
    ``limits`` (:mod:`ckpt_index.isolation.pool`), as a sync reads them."""
    from ckpt_index.isolation.pool import WorkerPool

    if not paths:
        return
    workers = max(1, min(os.cpu_count() or 1, 8, len(paths) // 16 + 1))
    jobs = [(str(path), {"wandb_online": wandb_online}) for path in paths]
    with WorkerPool(workers, limits, chunk=16) as pool:
        outcomes = pool.map("ckpt_index.sources.merge:infer_task", jobs)
        for path, outcome in zip(paths, outcomes, strict=True):  # one outcome per job
            if outcome.ok:
                yield path, Inferred(**outcome.value), None
            else:
                yield path, None, outcome.reason or "reader failed"


def metadata_from_inferred(
    inferred: Inferred, ckpt_path: str | os.PathLike[str]
) -> CheckpointMetadataV1:
    """A sidecar model from fallback results that the sidecar reader accepts.

    Raises:
        ConversionError: epoch or step unknown, the checkpoint unreadable, or (a bug guard) a
            document the schema would reject.
    """
    f = inferred.fields
    if inferred.unreadable:  # a sidecar must not vouch for a file that cannot be loaded
        raise ConversionError(inferred.unreadable)
    if f.get("epoch") is None or f.get("global_step") is None:
        raise ConversionError("no source gives the epoch and global step")
    document: dict[str, Any] = {
        "schema_version": "1.0",
        "checkpoint_path": str(ckpt_path),
        "exp_name": f.get("exp_name") or UNKNOWN,
        "created_at": f.get("created_at") or created_at_of(ckpt_path),
        "training": {
            "epoch": f["epoch"],
            "global_step": f["global_step"],
            "training_phase": f.get("training_phase") or "training",
        },
        "model": _model_part(f),
        "metrics": _metrics_part(f, inferred.metrics),
        "hydra_config_path": f.get("hydra_config_path"),
        "wandb_run_id": f.get("wandb_run_id"),
        "checkpointing": _checkpointing_part(f),
        # Provenance, an extra key the schema keeps: which source gave each field.
        "inferred_fields": dict(sorted(inferred.sources.items())),
    }
    # Schema 1.1's keys; the version stays "1.0": the seed design's reader accepts only that
    # one, and keeps them as extra keys (a 1.1 reader indexes them either way).
    params = inferred.params or {}
    if params:
        document["hyperparameters"] = nest_params(params.values())
    if inferred.hydra_overrides:
        document["hydra_overrides"] = list(inferred.hydra_overrides)
    try:
        return CheckpointMetadataV1.model_validate(document)
    except ValidationError as exc:
        raise ConversionError(
            f"metadata fails the schema: {format_validation_error(exc)}"
        ) from None


def nest_params(params: Iterable[hyperparams.Param]) -> dict[str, Any]:
    """Flat parameters as the nested mapping :func:`~ckpt_index.hyperparams.flatten` gives them
    back from: ``model.lr`` -> ``{"model": {"lr": ...}}``.

    A name whose path is taken by a value (``model`` and ``model.lr`` both set) is kept as a
    dotted key in the deepest mapping it reaches (``{"model": "x", "model.lr": 0.1}``); a name
    is split into at most :data:`~ckpt_index.hyperparams.MAX_DEPTH` parts, the depth past which
    ``flatten`` keeps a mapping as one value. NaN and infinities stay floats.
    """
    tree: dict[str, Any] = {}
    branches = {id(tree)}  # the mappings made here (a value may be a mapping too: ``{}``)
    # Fewer parts first: a value claims its key before a longer name could nest under it.
    for name, value_type, numeric, text, _source, _overridden in sorted(
        params, key=lambda p: (p[0].count("."), p[0])
    ):
        value = hyperparams.decode_value(value_type, numeric, text)
        if value_type == "float" and isinstance(value, str):
            value = float(value)  # "nan", "inf", "-inf"
        parts = name.split(".", hyperparams.MAX_DEPTH - 1)
        node = tree
        for i, part in enumerate(parts[:-1]):
            if part not in node:
                node[part] = {}
                branches.add(id(node[part]))
            elif id(node[part]) not in branches:  # a value holds the path: the rest is one key
                parts = parts[:i] + [".".join(parts[i:])]
                break
            node = node[part]
        key = parts[-1]
        if key not in node:
            node[key] = value
        elif name not in tree:  # the name is a path of longer names' mappings
            tree[name] = value
    return tree


def _model_part(f: dict[str, Any]) -> dict[str, Any]:
    """The sidecar's ``model``: a name no source gives is ``unknown`` (the decoder, head and loss
    included: the seed reader requires them); the encoder's flags only when a source gives them."""
    flags = {
        flag: f[field] for flag, field in FLAG_FIELDS.items() if isinstance(f.get(field), bool)
    }
    return {
        "architecture": f.get("architecture") or UNKNOWN,
        "encoder": {"model_name": f.get("encoder") or UNKNOWN, **flags},
        **{part: {"name": f.get(part) or UNKNOWN} for part in ("decoder", "head", "loss")},
    }


def _metrics_part(f: dict[str, Any], logged: dict[str, Any]) -> dict[str, Any]:
    """The canonical metrics a source gave, and every logged metric the index would keep (a
    metric it would drop, by name length or a non-finite value, is not worth vouching for)."""
    return {
        **{k: f[k] for k in CANONICAL_METRICS if f.get(k) is not None},
        "additional_metrics": {
            name: value
            for name, value in logged.items()
            if len(name) <= MAX_METRIC_NAME and finite_float(value) is not None
        },
    }


def _checkpointing_part(f: dict[str, Any]) -> dict[str, Any]:
    """How the checkpoints were chosen: the monitored metric (``unknown`` when no source names
    it: the seed reader requires the section) and each ModelCheckpoint setting a source gives."""
    monitor = f.get("monitor")
    return {
        "monitor": monitor if isinstance(monitor, str) and monitor else UNKNOWN,
        **({"mode": f["mode"]} if f.get("mode") in MODES else {}),
        **{k: f[k] for k in ("save_top_k", "save_last") if f.get(k) is not None},
    }


def check_round_trip(meta: CheckpointMetadataV1, target: Path) -> None:
    """Raise ConversionError unless the sidecar reader accepts ``meta`` as it would be written."""
    try:
        validate_document(parse_sidecar_bytes(dump_metadata(meta).encode("utf-8"), target), target)
    except SidecarError as exc:
        raise ConversionError(f"the sidecar would not read back: {exc.reason}") from None


def convert_checkpoints(
    paths: Iterable[str | os.PathLike[str]],
    *,
    force: bool = False,
    dry_run: bool = False,
    wandb_online: bool = False,
    infer: Callable[..., Inferred] | None = None,
    limits: Limits | None = None,
) -> ConvertSummary:
    """Write a sidecar for each checkpoint (existing sidecars are skipped unless ``force``).

    Checkpoints are read by worker processes under ``limits`` (a crash or a limit fails that
    file only); ``infer(path, wandb_online=...)`` replaces that with a reader of the caller's,
    run in this process. One file's failure, of any kind, is that file's entry in ``failures``.
    """
    summary = ConvertSummary()
    todo: list[Path] = []
    for path in map(Path, paths):
        summary.found += 1
        target = sidecar_path_for(path)
        if target.exists() and not force:
            log.debug("metadata exists (skipping): %s", target)
            summary.skipped += 1
            continue
        todo.append(path)
    if infer is None:
        results = infer_isolated(todo, wandb_online=wandb_online, limits=limits)
    else:
        results = _infer_here(todo, infer, wandb_online)
    for path, inferred, failure in results:
        target = sidecar_path_for(path)
        try:
            _convert_one(path, target, inferred, failure, force=force, dry_run=dry_run)
        except Exception as exc:  # noqa: BLE001 - one file never stops a conversion
            reason = _failure_reason(exc)
            log.error("failed: %s: %s", path, reason)
            summary.failed += 1
            summary.failures.append((str(path), reason))
            continue
        summary.converted += 1
        summary.written.append(str(target))
        log.info(
            "%s: %s -> %s", "would convert" if dry_run else "converted", path.name, target.name
        )
    return summary


def _convert_one(
    path: Path,
    target: Path,
    inferred: Inferred | None,
    failure: str | None,
    *,
    force: bool,
    dry_run: bool,
) -> None:
    """Write one sidecar (not in a dry run) once it is known to read back as written."""
    if failure is not None or inferred is None:
        raise ConversionError(f"cannot read the checkpoint: {failure}")
    meta = metadata_from_inferred(inferred, path)
    check_round_trip(meta, target)
    if not dry_run:
        save_metadata(meta, path, force=force)


def _failure_reason(exc: Exception) -> str:
    """One line: a ConversionError's own words, any other error with its class name."""
    text = str(exc) if isinstance(exc, ConversionError) else f"{exc.__class__.__name__}: {exc}"
    return _one_line(text) or exc.__class__.__name__


def _infer_here(
    paths: list[Path],
    infer: Callable[..., Inferred],
    wandb_online: bool,
) -> Iterator[tuple[Path, Inferred | None, str | None]]:
    for path in paths:
        try:
            yield path, infer(path, wandb_online=wandb_online), None
        except Exception as exc:  # noqa: BLE001 - reported as the file's failure
            yield path, None, f"{exc.__class__.__name__}: {exc}"


def _one_line(text: str) -> str:
    return clean_text(" ".join(text.split()))
