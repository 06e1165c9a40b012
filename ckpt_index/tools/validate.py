"""``ckpt-index validate ROOT``: check every sidecar and checkpoint under a tree, index untouched.

Sidecars are read here (their reader bounds its own work); checkpoints are inspected by worker
processes under limits (:mod:`ckpt_index.isolation.pool`): whether each is a complete archive, and
which pickle globals ``torch.load(weights_only=True)`` would refuse in it. Nothing here needs a
database, so validating loads neither SQLAlchemy nor alembic (a test holds it to that).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ckpt_index.index.records import is_stale
from ckpt_index.isolation.pool import Limits
from ckpt_index.sidecar.files import SidecarError, read_sidecar
from ckpt_index.sidecar.schema import metadata_warnings
from ckpt_index.sync.scan import scan


@dataclass
class ValidationReport:
    root: str
    valid: list[str] = field(default_factory=list)
    #: (sidecar path, reason)
    invalid: list[tuple[str, str]] = field(default_factory=list)
    #: (sidecar path, warning) for valid sidecars with something worth knowing
    warnings: list[tuple[str, str]] = field(default_factory=list)
    #: Checkpoints without a sidecar (a sync fills them from fallbacks: 'inferred', or 'missing').
    without_sidecar: list[str] = field(default_factory=list)
    orphaned: list[str] = field(default_factory=list)
    #: (checkpoint path, reason) of checkpoints that cannot be loaded (truncated, not a checkpoint)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    #: Sidecars older than the checkpoint beside them (the checkpoint was replaced after).
    stale: list[str] = field(default_factory=list)
    #: checkpoint path -> the globals torch.load(weights_only=True) would refuse (non-empty only)
    unsafe_globals: dict[str, list[str]] = field(default_factory=dict)
    #: (link path, reason) of links to checkpoints that are not indexed: dangling, or pointing out
    #: of the root (a link to a checkpoint in the tree is an alias of it, not a checkpoint).
    dangling_links: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.invalid and not self.unreadable

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "valid": self.valid,
            "invalid": [{"path": p, "reason": r} for p, r in self.invalid],
            "warnings": [{"path": p, "warning": w} for p, w in self.warnings],
            "without_sidecar": self.without_sidecar,
            "orphaned": self.orphaned,
            "unreadable": [{"path": p, "reason": r} for p, r in self.unreadable],
            "stale": self.stale,
            "unsafe_globals": self.unsafe_globals,
            "dangling_links": [{"path": p, "reason": r} for p, r in self.dangling_links],
            "counts": {
                "valid": len(self.valid),
                "invalid": len(self.invalid),
                "without_sidecar": len(self.without_sidecar),
                "orphaned": len(self.orphaned),
                "unreadable": len(self.unreadable),
                "stale": len(self.stale),
                "unsafe_globals": len(self.unsafe_globals),
                "dangling_links": len(self.dangling_links),
            },
        }


def validate_tree(
    root: str | os.PathLike[str],
    *,
    checkpoints: bool = True,
    limits: Limits | None = None,
) -> ValidationReport:
    """Check every sidecar and checkpoint below ``root``; ``checkpoints=False`` skips the latter."""
    root_path = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root_path):
        raise NotADirectoryError(f"{root_path}: not a directory")
    report = ValidationReport(root_path)
    found = sorted(scan(root_path, report.invalid, links=report.dangling_links).items())
    for ckpt_path, item in found:
        if item.sidecar_path is None:
            report.without_sidecar.append(ckpt_path)
            continue
        if item.ckpt is None:
            report.orphaned.append(item.sidecar_path)
        try:
            meta = read_sidecar(item.sidecar_path)
        except SidecarError as exc:
            report.invalid.append((item.sidecar_path, exc.reason))
            continue
        report.valid.append(item.sidecar_path)
        report.warnings.extend((item.sidecar_path, w) for w in metadata_warnings(meta))
        if is_stale(item.ckpt, item.sidecar):
            report.stale.append(item.sidecar_path)
    paths = [path for path, item in found if item.ckpt is not None]
    if checkpoints and paths:
        _inspect(paths, report, limits)
    return report


def _inspect(paths: list[str], report: ValidationReport, limits: Limits | None) -> None:
    from ckpt_index.isolation.pool import WorkerPool

    workers = max(1, min(os.cpu_count() or 1, 8, len(paths) // 32 + 1))
    task = "ckpt_index.sources.checkpoint.tasks:inspect_checkpoint_task"
    with WorkerPool(workers, limits, chunk=32) as pool:
        outcomes = pool.map(task, [(p,) for p in paths])
        for path, outcome in zip(paths, outcomes, strict=True):  # one outcome per job
            broken, unsafe = outcome.value if outcome.ok else (outcome.reason, None)
            if broken is not None:
                report.unreadable.append((path, broken))
            elif unsafe:
                report.unsafe_globals[path] = unsafe
