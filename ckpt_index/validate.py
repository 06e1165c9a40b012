"""``ckpt-index validate ROOT``: check every sidecar under a tree without touching the index."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ckpt_index.schema import metadata_warnings
from ckpt_index.sidecar import SidecarError, read_sidecar
from ckpt_index.sync import scan


@dataclass
class ValidationReport:
    root: str
    valid: list[str] = field(default_factory=list)
    #: (sidecar path, reason)
    invalid: list[tuple[str, str]] = field(default_factory=list)
    #: (sidecar path, warning) for valid sidecars with something worth knowing
    warnings: list[tuple[str, str]] = field(default_factory=list)
    without_metadata: list[str] = field(default_factory=list)
    orphaned: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.invalid

    def to_dict(self) -> dict:
        return {
            "root": self.root,
            "valid": self.valid,
            "invalid": [{"path": p, "reason": r} for p, r in self.invalid],
            "warnings": [{"path": p, "warning": w} for p, w in self.warnings],
            "without_metadata": self.without_metadata,
            "orphaned": self.orphaned,
            "counts": {
                "valid": len(self.valid), "invalid": len(self.invalid),
                "without_metadata": len(self.without_metadata), "orphaned": len(self.orphaned),
            },
        }


def validate_tree(root: str | os.PathLike[str]) -> ValidationReport:
    """Read every sidecar below ``root``; list valid, invalid (with reasons) and missing ones."""
    root_path = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root_path):
        raise NotADirectoryError(f"{root_path}: not a directory")
    report = ValidationReport(root_path)
    for ckpt_path, item in sorted(scan(root_path).items()):
        if item.sidecar_path is None:
            report.without_metadata.append(ckpt_path)
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
    return report
