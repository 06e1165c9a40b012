"""Planning a garbage collection: which indexed checkpoints under the given roots ``ckpt-index
gc`` would delete, and why each of the others is kept (issue 13).

A plan is made from the index (opened read-only: planning never writes, never creates the index)
and one ``lstat`` scan of each run folder (links, hard-link counts, newest change). Nothing is
deleted here: :func:`ckpt_index.tools.gc_apply.apply_gc` carries a plan out and re-checks every
item first. The never-delete classes (best K, link targets, ``best*``/``last*`` names, newest of
each run, pinned, active runs, unranked, other locations, files outside the roots) keep a
checkpoint whatever the policy says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Values of ``GcPolicy.per``: the groups checkpoints are ranked in.
PER_CHOICES = ("exp_name", "run", "none")
KEEP = "keep"
DELETE = "delete"


@dataclass(frozen=True)
class GcPolicy:
    """What to keep: the best ``keep_best`` by ``by`` in each group, and the rest of the rules."""

    keep_best: int
    by: str  # "val/hmean" or "val/hmean:max" / ":min"; default direction is the query's
    per: str = "exp_name"  # "exp_name" | "run" | "none"
    keep_last: int = 1  # the N newest of each run (the newest is always kept)
    keep_every_epochs: int | None = None  # keep epochs with (epoch + 1) % N == 0
    keep: tuple[str, ...] = ()  # globs on the path relative to its root or on the file name
    older_than: float | None = None  # seconds: only files older than this may be deleted
    include_active: bool = False
    include_unranked: bool = False
    active_window: float = 600.0  # seconds: a run folder changed within this is active

    def to_dict(self) -> dict[str, Any]:
        return {
            "keep_best": self.keep_best,
            "by": self.by,
            "per": self.per,
            "keep_last": self.keep_last,
            "keep_every_epochs": self.keep_every_epochs,
            "keep": list(self.keep),
            "older_than": self.older_than,
            "include_active": self.include_active,
            "include_unranked": self.include_unranked,
            "active_window": self.active_window,
        }


@dataclass(frozen=True)
class GcItem:
    """One indexed checkpoint under a root: kept or deleted, and every reason why."""

    checkpoint_path: str  # absolute
    sidecar_path: str | None  # None when there is no sidecar file
    root: str  # the given root it lies under (absolute, resolved)
    group: str  # the exp_name / run folder / "" it was ranked in
    exp_name: str | None
    run: str  # the checkpoint's folder (absolute)
    epoch: int | None
    global_step: int | None
    value: float | None  # the metric's value; None: unranked
    size: int  # bytes this deletion frees (checkpoint + sidecar)
    action: str  # "keep" | "delete"
    reasons: tuple[str, ...]
    row_id: int
    ckpt_identity: tuple[int, int, int, int] | None  # (st_dev, st_ino, st_size, st_mtime_ns)
    sidecar_identity: tuple[int, int] | None  # (st_size, st_mtime_ns)

    def to_dict(self) -> dict[str, Any]:
        return {
            "checkpoint_path": self.checkpoint_path,
            "sidecar_path": self.sidecar_path,
            "root": self.root,
            "group": self.group,
            "exp_name": self.exp_name,
            "run": self.run,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "value": self.value,
            "size": self.size,
            "action": self.action,
            "reasons": list(self.reasons),
            "row_id": self.row_id,
        }


@dataclass(frozen=True)
class GcPlan:
    """Every indexed checkpoint under the roots at this location, each kept or deleted."""

    policy: GcPolicy
    roots: tuple[str, ...]
    db_url: str
    location: str
    created_at: str  # ISO time
    items: tuple[GcItem, ...]

    @property
    def deletions(self) -> tuple[GcItem, ...]:
        return tuple(item for item in self.items if item.action == DELETE)

    @property
    def kept(self) -> tuple[GcItem, ...]:
        return tuple(item for item in self.items if item.action == KEEP)

    @property
    def bytes_freed(self) -> int:
        return sum(item.size for item in self.deletions)

    def freed_by_group(self) -> dict[str, int]:
        """Bytes a deletion frees per experiment (``""`` for checkpoints without one)."""
        freed: dict[str, int] = {}
        for item in self.items:
            key = item.exp_name or ""
            freed[key] = freed.get(key, 0) + (item.size if item.action == DELETE else 0)
        return freed

    def to_dict(self) -> dict[str, Any]:
        deletions = self.deletions
        return {
            "policy": self.policy.to_dict(),
            "roots": list(self.roots),
            "location": self.location,
            "created_at": self.created_at,
            "items": [item.to_dict() for item in self.items],
            "totals": {
                "checkpoints": len(self.items),
                "delete": len(deletions),
                "keep": len(self.items) - len(deletions),
                "bytes_freed": sum(item.size for item in deletions),
                "by_exp_name": self.freed_by_group(),
            },
        }


def plan_gc(
    roots: Any, policy: GcPolicy | None = None, *, db: str | None = None, **policy_fields: Any
) -> GcPlan:
    """The plan for ``roots`` under ``policy`` (or a policy made of ``policy_fields``)."""
    raise NotImplementedError("plan_gc: being written (issue 13)")
