"""``ckpt-index convert``: write sidecars for checkpoints that have none, from the fallbacks.

A required name no source gives is written as ``unknown`` (the seeds' convention, so their readers
accept the file); the index shows it as empty. Epoch and global step are never guessed: a
checkpoint whose epoch no source gives is reported as failed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ckpt_index.fallback import Inferred, created_at_of, infer_metadata
from ckpt_index.schema import CheckpointMetadataV1
from ckpt_index.sidecar import CKPT_SUFFIX, save_metadata, sidecar_path_for

log = logging.getLogger("ckpt_index.convert")
UNKNOWN = "unknown"


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

    def to_dict(self) -> dict:
        return {
            "found": self.found, "converted": self.converted, "skipped": self.skipped,
            "failed": self.failed, "written": self.written,
            "failures": [{"path": p, "reason": r} for p, r in self.failures],
        }


def find_checkpoints(directory: str | os.PathLike[str], *, recursive: bool = True) -> list[Path]:
    root = Path(directory)
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a directory")
    pattern = f"**/*{CKPT_SUFFIX}" if recursive else f"*{CKPT_SUFFIX}"
    return sorted(p for p in root.glob(pattern) if p.is_file())


def metadata_from_inferred(inferred: Inferred, ckpt_path: str | os.PathLike[str]) -> CheckpointMetadataV1:
    """A sidecar model from fallback results; ConversionError when epoch or step is unknown."""
    f = inferred.fields
    if inferred.unreadable:  # a sidecar must not vouch for a file that cannot be loaded
        raise ConversionError(inferred.unreadable)
    if f.get("epoch") is None or f.get("global_step") is None:
        reason = inferred.unreadable or "no source gives the epoch and global step"
        raise ConversionError(reason)
    metrics = dict(inferred.metrics)
    document: dict = {
        "schema_version": "1.0",
        "checkpoint_path": str(ckpt_path),
        "exp_name": f.get("exp_name") or UNKNOWN,
        "created_at": created_at_of(ckpt_path),
        "training": {
            "epoch": f["epoch"], "global_step": f["global_step"],
            "training_phase": f.get("training_phase") or "training",
        },
        "model": {
            "architecture": f.get("architecture") or UNKNOWN,
            "encoder": {"model_name": f.get("encoder") or UNKNOWN},
            **{part: {"name": f[part]} for part in ("decoder", "head", "loss") if f.get(part)},
        },
        "metrics": {
            **{k: f[k] for k in ("precision", "recall", "hmean", "validation_loss")
               if f.get(k) is not None},
            "additional_metrics": metrics,
        },
        "hydra_config_path": f.get("hydra_config_path"),
        "wandb_run_id": f.get("wandb_run_id"),
        # Provenance, an extra key the schema keeps: which source gave each field.
        "inferred_fields": dict(sorted(inferred.sources.items())),
    }
    if f.get("monitor"):
        document["checkpointing"] = {
            "monitor": f["monitor"], "mode": f.get("mode") or "max",
            **{k: f[k] for k in ("save_top_k", "save_last") if f.get(k) is not None},
        }
    return CheckpointMetadataV1.model_validate(document)


def convert_checkpoints(
    paths: Iterable[str | os.PathLike[str]], *, force: bool = False, dry_run: bool = False,
    wandb_online: bool = False,
) -> ConvertSummary:
    """Write a sidecar for each checkpoint (existing sidecars are skipped unless ``force``)."""
    summary = ConvertSummary()
    for path in paths:
        path = Path(path)
        summary.found += 1
        target = sidecar_path_for(path)
        if target.exists() and not force:
            log.debug("metadata exists (skipping): %s", target)
            summary.skipped += 1
            continue
        try:
            meta = metadata_from_inferred(infer_metadata(path, wandb_online=wandb_online), path)
            if not dry_run:
                save_metadata(meta, path, force=force)
        except (ConversionError, OSError, ValueError) as exc:
            reason = str(exc) or exc.__class__.__name__
            log.error("failed: %s: %s", path, reason)
            summary.failed += 1
            summary.failures.append((str(path), reason))
            continue
        summary.converted += 1
        summary.written.append(str(target))
        log.info("%s: %s -> %s", "would convert" if dry_run else "converted", path.name, target.name)
    return summary
