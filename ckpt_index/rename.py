"""``ckpt-index rename``: move checkpoints from older name formats to the naming scheme.

``epoch_epoch_22_step_step_001932_20251009_015037.ckpt``, ``epoch_22_step_1932.ckpt`` and
``epoch=7-step=640.ckpt`` become ``epoch-22_step-001932.ckpt`` in the same directory; sidecars move
with their checkpoints and the index rows follow. An existing file is never overwritten (the
rename is reported and skipped), ``best*`` and ``last*`` are never deleted, nothing is deleted
without ``delete_old``, and a dry run changes nothing.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckpt_index.naming import parse_checkpoint_name, scheme_checkpoint_name
from ckpt_index.sidecar import CKPT_SUFFIX, sidecar_path_for

log = logging.getLogger("ckpt_index.rename")
OLD_FORMATS = ("legacy_double", "legacy", "lightning")


@dataclass
class Action:
    kind: str  # rename | delete | skip | error
    path: str
    target: str | None = None
    reason: str | None = None


@dataclass
class RenameSummary:
    processed: int = 0
    renamed: int = 0
    deleted: int = 0
    skipped: int = 0
    errors: int = 0
    actions: list[Action] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "processed": self.processed, "renamed": self.renamed, "deleted": self.deleted,
            "skipped": self.skipped, "errors": self.errors,
            "actions": [a.__dict__ for a in self.actions],
        }


def plan(root: str | os.PathLike[str], *, delete_old: bool = False,
         keep_from_epoch: int | None = None) -> list[Action]:
    """What a rename of ``root`` would do, without doing it."""
    if delete_old and keep_from_epoch is None:
        raise ValueError("delete_old needs keep_from_epoch: checkpoints of earlier epochs go")
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a directory")
    actions: list[Action] = []
    claimed: set[Path] = set()
    for path in sorted(root.rglob(f"*{CKPT_SUFFIX}")):
        if not path.is_file():
            continue
        name = parse_checkpoint_name(path.name)
        protected = path.name.startswith(("best", "last"))
        if (delete_old and not protected and name.epoch is not None
                and name.epoch < keep_from_epoch):  # type: ignore[operator]
            actions.append(Action("delete", str(path), reason=f"epoch {name.epoch} < {keep_from_epoch}"))
            continue
        if name.format not in OLD_FORMATS:
            continue
        if name.epoch is None or name.step is None:
            actions.append(Action("skip", str(path), reason="the name gives no step"))
            continue
        target = path.with_name(scheme_checkpoint_name(name.epoch, name.step))
        if target.exists() or sidecar_path_for(target).exists() or target in claimed:
            actions.append(Action("skip", str(path), str(target), "target exists"))
            continue
        claimed.add(target)
        actions.append(Action("rename", str(path), str(target)))
    return actions


def rename_checkpoints(root: str | os.PathLike[str], *, dry_run: bool = False,
                       delete_old: bool = False, keep_from_epoch: int | None = None,
                       db: Any = None) -> RenameSummary:
    """Apply :func:`plan`; update the index when ``db`` (or the default index) exists."""
    summary = RenameSummary()
    moved: list[tuple[str, str, str | None]] = []
    removed: list[str] = []
    for action in plan(root, delete_old=delete_old, keep_from_epoch=keep_from_epoch):
        summary.processed += 1
        try:
            if action.kind == "rename" and not dry_run:
                _move(Path(action.path), Path(action.target))  # type: ignore[arg-type]
                new_sidecar = sidecar_path_for(action.target)  # type: ignore[arg-type]
                moved.append((action.path, action.target, str(new_sidecar) if new_sidecar.exists() else None))  # type: ignore[arg-type]
            elif action.kind == "delete" and not dry_run:
                sidecar = sidecar_path_for(action.path)
                os.unlink(action.path)
                if sidecar.exists():
                    os.unlink(sidecar)
                removed.append(action.path)
        except OSError as exc:
            action = Action("error", action.path, action.target, exc.strerror or str(exc))
        summary.actions.append(action)
        counter = {"rename": "renamed", "delete": "deleted", "skip": "skipped", "error": "errors"}
        setattr(summary, counter[action.kind], getattr(summary, counter[action.kind]) + 1)
        log.info("%s%s %s%s", "[dry run] " if dry_run else "", action.kind, action.path,
                 f" -> {action.target}" if action.target and action.kind == "rename" else
                 f" ({action.reason})" if action.reason else "")
    if (moved or removed) and not dry_run:
        _update_index(db, moved, removed)
    return summary


def _move(source: Path, target: Path) -> None:
    """Rename without ever replacing: link() fails when the target exists."""
    os.link(source, target)
    os.unlink(source)
    old_sidecar, new_sidecar = sidecar_path_for(source), sidecar_path_for(target)
    if old_sidecar.exists():
        os.link(old_sidecar, new_sidecar)
        os.unlink(old_sidecar)


def _update_index(db: Any, moved: list[tuple[str, str, str | None]], removed: list[str]) -> None:
    from ckpt_index.db import sqlite_file, is_sqlite, open_engine, resolve_db_url, resolve_location, write_transaction
    from ckpt_index.tables import checkpoints
    from ckpt_index.store import delete_paths

    url = resolve_db_url(db)
    if is_sqlite(url) and not os.path.exists(sqlite_file(url) or ""):
        return  # no index to update; do not create one as a side effect of renaming
    engine = open_engine(url)
    location = resolve_location()
    c = checkpoints.c
    try:
        with write_transaction(engine) as conn:
            for old, new, new_sidecar in moved:
                conn.execute(
                    checkpoints.update()
                    .where(c.location == location, c.checkpoint_path == os.path.abspath(old))
                    .values(checkpoint_path=os.path.abspath(new),
                            sidecar_path=os.path.abspath(new_sidecar) if new_sidecar else None)
                )
            delete_paths(conn, [os.path.abspath(p) for p in removed], location=location)
    finally:
        engine.dispose()
