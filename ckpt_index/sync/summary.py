"""What a sync did: :class:`SyncSummary`, filled root by root by :mod:`ckpt_index.sync.roots`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from ckpt_index.index.records import is_stale

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
    #: Checkpoints without a sidecar: filled from fallbacks (``inferred``), or left empty
    #: (``missing``, with --no-infer); ``validate`` counts both as "without sidecar".
    inferred: int = 0
    missing: int = 0
    #: Checkpoints that cannot be loaded (truncated, not a checkpoint), with or without a sidecar.
    unreadable: int = 0
    #: Checkpoints with no sidecar beside them, whatever their status (as ``validate`` counts).
    without_sidecar: int = 0
    #: Sidecars older than the checkpoint beside them (the checkpoint was replaced after).
    stale: int = 0
    elapsed_s: float = 0.0
    #: (path, reason) of every invalid sidecar under the roots.
    invalid_files: list[tuple[str, str]] = field(default_factory=list)
    #: (path, reason) of every unreadable checkpoint under the roots.
    unreadable_files: list[tuple[str, str]] = field(default_factory=list)
    #: (directory, reason) of directories that could not be listed; their rows were kept.
    unlisted_dirs: list[tuple[str, str]] = field(default_factory=list)
    #: Rows kept (flagged with ``scan_error``) because their directory could not be listed.
    kept: int = 0
    #: Links to checkpoints listed in their target's ``aliases`` (not rows of their own).
    aliases: int = 0
    #: (path, reason) of links that are not indexed: dangling, or pointing out of the root.
    dangling_links: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["invalid_files"] = [{"path": p, "reason": r} for p, r in self.invalid_files]
        data["unreadable_files"] = [{"path": p, "reason": r} for p, r in self.unreadable_files]
        data["unlisted_dirs"] = [{"path": p, "reason": r} for p, r in self.unlisted_dirs]
        data["dangling_links"] = [{"path": p, "reason": r} for p, r in self.dangling_links]
        return data

    def one_line(self) -> str:
        return (
            f"synced {self.checkpoints} checkpoints, {self.sidecars} sidecars in "
            f"{self.elapsed_s:.2f}s: {self.added} added, {self.updated} updated, "
            f"{self.removed} removed, {self.unchanged} unchanged; {self.valid} valid, "
            f"{self.invalid} invalid, {self.unreadable} unreadable, {self.inferred} inferred, "
            f"{self.missing} missing; {self.without_sidecar} without sidecar, "
            f"{self.orphaned} orphaned sidecars, {self.stale} stale"
            + (
                f"; {len(self.unlisted_dirs)} directories could not be listed "
                f"({self.kept} rows kept as they were)"
                if self.unlisted_dirs
                else ""
            )
            + (f"; {self.aliases} links are aliases" if self.aliases else "")
            + (
                f"; {len(self.dangling_links)} links not indexed (dangling or out of the root)"
                if self.dangling_links
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
            self.invalid_files.append((sidecar_path or item_path, reason or ""))
        elif status == "inferred":
            self.inferred += 1
        elif status == "unreadable":
            self.unreadable += 1
            self.unreadable_files.append((item_path, reason or ""))
        else:
            self.missing += 1
        self.aliases += len(item.aliases)
        if item.sidecar is None:
            self.without_sidecar += 1
        elif item.ckpt is None:
            self.orphaned += 1
        elif status != "invalid" and is_stale(item.ckpt, item.sidecar):
            self.stale += 1
