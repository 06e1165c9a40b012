"""What a sync did: :class:`SyncSummary`, filled root by root by :mod:`ckpt_index.sync.roots`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ckpt_index.sync.scan import Found


@dataclass
class SyncSummary:
    """What a sync did: counts by outcome, and the files and directories it could not use."""

    location: str = ""
    roots: list[str] = field(default_factory=list)
    checkpoints: int = 0
    sidecars: int = 0
    parsed: int = 0
    unchanged: int = 0
    added: int = 0
    updated: int = 0
    removed: int = 0
    valid: int = 0
    invalid: int = 0
    orphaned: int = 0
    #: Checkpoints without a sidecar: filled from fallbacks, unreadable, or left empty (--no-infer).
    inferred: int = 0
    unreadable: int = 0
    without_metadata: int = 0
    elapsed_s: float = 0.0
    #: (path, reason) of every invalid sidecar and unreadable checkpoint under the roots.
    invalid_files: list[tuple[str, str]] = field(default_factory=list)
    #: (directory, reason) of directories that could not be listed; their rows were kept.
    unlisted_dirs: list[tuple[str, str]] = field(default_factory=list)
    #: Rows kept (flagged with ``scan_error``) because their directory could not be listed.
    kept: int = 0

    def to_dict(self) -> dict:
        data = asdict(self)
        data["invalid_files"] = [{"path": p, "reason": r} for p, r in self.invalid_files]
        data["unlisted_dirs"] = [{"path": p, "reason": r} for p, r in self.unlisted_dirs]
        return data

    def one_line(self) -> str:
        return (
            f"synced {self.checkpoints} checkpoints, {self.sidecars} sidecars in "
            f"{self.elapsed_s:.2f}s: {self.added} added, {self.updated} updated, "
            f"{self.removed} removed, {self.unchanged} unchanged; {self.valid} valid, "
            f"{self.invalid} invalid, {self.inferred} inferred, {self.unreadable} unreadable, "
            f"{self.without_metadata} without metadata, {self.orphaned} orphaned sidecars"
            + (
                f"; {len(self.unlisted_dirs)} directories could not be listed "
                f"({self.kept} rows kept as they were)"
                if self.unlisted_dirs
                else ""
            )
        )

    def count(
        self,
        status: str,
        item: Found,
        item_path: str,
        sidecar_path: str | None,
        reason: str | None,
    ) -> None:
        """Count one row's ``status``; an invalid sidecar or unreadable checkpoint is listed."""
        if status == "valid":
            self.valid += 1
        elif status == "invalid":
            self.invalid += 1
            self.invalid_files.append((sidecar_path or "", reason or ""))
        elif status == "inferred":
            self.inferred += 1
        elif status == "unreadable":
            self.unreadable += 1
            self.invalid_files.append((item_path, reason or ""))
        else:
            self.without_metadata += 1
        if item.sidecar is not None and item.ckpt is None:
            self.orphaned += 1
