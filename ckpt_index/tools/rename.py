"""``ckpt-index rename``: move checkpoints from older name formats to the naming scheme.

``epoch_epoch_22_step_step_001932_20251009_015037.ckpt``, ``epoch_22_step_1932.ckpt`` and
``epoch=7-step=640.ckpt`` become ``epoch-22_step-001932.ckpt`` in the same directory; sidecars move
with their checkpoints, symbolic links that pointed at the old name are rewritten to the new one,
and the index rows follow. Nothing is lost:

- Nothing is overwritten: every move is ``link()`` then ``unlink()``, and ``link()`` fails when
  the new name exists. A link being rewritten is replaced by the new link, never a file.
- ``best*`` and ``last*`` names (any case, whatever follows: ``best-epoch=3-step=300.ckpt``,
  ``last-v1.ckpt``) are never renamed and never deleted: such a name already says what the file
  is, and Lightning writes them as links or copies of another checkpoint.
- Nothing is deleted without ``delete_old``; even then a file is kept when it is the target of a
  symbolic link under ``root`` or has other hard links (``st_nlink > 1``): it is an alias of
  something (a ``best-*`` link, ``save_last="link"``), and deleting it would free nothing or
  leave a dangling link. Symbolic links themselves are neither renamed nor deleted, and nothing is
  followed out of ``root`` (directory links are not walked).
- A rename interrupted at any point (a crash, SIGKILL, a full disk) completes on the next run.
  The old name goes last: the checkpoint is linked to its new name, the sidecar moved, the links
  rewritten, and only then the old checkpoint name unlinked, so a rerun finds the old name still
  sharing an inode with the new one and finishes. Leftovers of earlier versions, which moved the
  checkpoint first, are repaired too: a sidecar left beside a checkpoint that already has its
  scheme name moves to it, and a link left dangling at an old name is pointed at the new one.

A link outside ``root`` that points at a renamed file cannot be found and is left dangling.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckpt_index.sidecar.files import checkpoint_path_for, sidecar_path_for
from ckpt_index.sync.scan import storable
from ckpt_index.tools.rename_plan import (
    RELINK_SUFFIX,
    Action,
    Step,
    build_plan,
    is_kept_name,
    plan,
    same_file,
    scheme_path,
)

__all__ = ["Action", "RenameSummary", "is_kept_name", "plan", "rename_checkpoints"]

log = logging.getLogger("ckpt_index.tools.rename")


#: (old checkpoint path, new checkpoint path, new sidecar path or None): a move the index follows.
Moved = tuple[str, str, str | None]
#: The RenameSummary counter of each kind of action.
_COUNTERS = {
    "rename": "renamed",
    "delete": "deleted",
    "skip": "skipped",
    "error": "errors",
    "relink": "relinked",
}


@dataclass
class RenameSummary:
    processed: int = 0
    renamed: int = 0
    deleted: int = 0
    skipped: int = 0
    errors: int = 0
    relinked: int = 0
    actions: list[Action] = field(default_factory=list)

    def record(self, action: Action) -> None:
        """Note an action taken (or planned, in a dry run) and count it by kind."""
        self.actions.append(action)
        counter = _COUNTERS[action.kind]
        setattr(self, counter, getattr(self, counter) + 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "processed": self.processed,
            "renamed": self.renamed,
            "deleted": self.deleted,
            "skipped": self.skipped,
            "errors": self.errors,
            "relinked": self.relinked,
            "actions": [a.__dict__ for a in self.actions],
        }


def rename_checkpoints(
    root: str | os.PathLike[str],
    *,
    dry_run: bool = False,
    delete_old: bool = False,
    keep_from_epoch: int | None = None,
    db: Any = None,
) -> RenameSummary:
    """Apply :func:`plan`; update the index when ``db`` (or the default index) exists.

    ``db=False`` leaves every index alone (as ``MetadataCallback(db=False)``). A step that fails
    becomes an ``error`` action and the others go on: nothing is lost, and a rerun completes it.
    """
    summary = RenameSummary()
    moved: list[Moved] = []
    removed: list[str] = []
    for step in build_plan(root, delete_old, keep_from_epoch):
        action = step.action
        if action.kind != "relink":
            summary.processed += 1
        try:
            done = step.relinks if dry_run else _apply(step, moved, removed)
        except (OSError, _Changed) as exc:
            reason = (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc)
            if action.kind == "rename":
                reason += " (nothing lost; a rerun completes it)"
            action, done = Action("error", action.path, action.target, reason), []
        for taken in (action, *done):
            summary.record(taken)
            log.info("%s%s", "[dry run] " if dry_run else "", _describe(taken))
    if not dry_run:
        _update_index(root, moved, removed, db)
    return summary


def _describe(action: Action) -> str:
    """``rename PATH -> TARGET``, or ``KIND PATH (REASON)`` for the others."""
    if action.target and action.kind in ("rename", "relink"):
        return f"{action.kind} {action.path} -> {action.target}"
    return f"{action.kind} {action.path}" + (f" ({action.reason})" if action.reason else "")


def _apply(step: Step, moved: list[Moved], removed: list[str]) -> list[Action]:
    """Carry out one step; return the links it rewrote. Moves and deletions are noted for the
    index."""
    action = step.action
    path, target = Path(action.path), Path(action.target) if action.target else None
    if action.kind == "rename" and target is not None and step.ckpt is not None:
        _move_sidecar(path, target)
        moved.append((step.ckpt, str(checkpoint_path_for(target)), str(target)))
    elif action.kind == "rename" and target is not None:
        done = _move(path, target, step)
        new_sidecar = sidecar_path_for(target)
        moved.append((str(path), str(target), str(new_sidecar) if new_sidecar.exists() else None))
        return done
    elif action.kind == "relink" and action.target is not None:
        _relink(path, action.target, step.link_was[action.path])
    elif action.kind == "delete":
        _delete(path, step.identity)
        removed.append(str(path))
    return []


class _Changed(Exception):
    """A file changed between the plan and the step: the step is not taken."""


def _move(source: Path, target: Path, step: Step) -> list[Action]:
    """Move a checkpoint, its sidecar and the links to it; return the links rewritten.

    The old checkpoint name is unlinked last, after the new name, the sidecar and the links are
    in place: a rerun after a crash at any point sees both names on one inode and finishes.
    """
    st = os.lstat(source)
    if step.identity is not None and (st.st_dev, st.st_ino) != step.identity:
        raise _Changed(f"{source.name} was replaced since the plan")
    if not same_file(target, st):
        # follow_symlinks=False: a link() of a symlink moves the link, never what it points at.
        os.link(source, target, follow_symlinks=False)
    old_sidecar = sidecar_path_for(source)
    if os.path.lexists(old_sidecar):
        _move_sidecar(old_sidecar, sidecar_path_for(target))
    done = []
    for relink in step.relinks:
        _relink(Path(relink.path), relink.target or "", step.link_was[relink.path])
        done.append(relink)
    if not same_file(target, os.lstat(source)):
        raise _Changed(f"{target.name} is no longer {source.name}")
    os.unlink(source)
    return done


def _move_sidecar(old: Path, new: Path) -> None:
    st = os.lstat(old)
    if not os.path.lexists(new):
        os.link(old, new, follow_symlinks=False)
    elif not same_file(new, st):
        raise _Changed(f"both {old.name} and {new.name} exist")
    os.unlink(old)


def _relink(link: Path, new_content: str, old_content: str) -> None:
    """Point ``link`` at ``new_content``: a new link under a temporary name replaces it."""
    if not os.path.islink(link):
        raise _Changed(f"{link.name} is no longer a link")
    current = os.readlink(link)
    if current == new_content:
        return  # done by an earlier, interrupted run
    if current != old_content:
        raise _Changed(f"{link.name} was changed since the plan")
    temporary = link.with_name(f".{link.name}{RELINK_SUFFIX}")
    if os.path.islink(temporary):
        os.unlink(temporary)  # left by a run killed between the two calls below
    os.symlink(new_content, temporary)
    try:
        os.replace(temporary, link)  # replaces the link itself, never what it points at
    except BaseException:
        os.unlink(temporary)
        raise


def _delete(path: Path, identity: tuple[int, int] | None) -> None:
    """Delete a checkpoint planned for deletion, sidecar first: a rerun deletes what a crash
    left."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != identity or st.st_nlink > 1:
        raise _Changed(f"{path.name} changed since the plan (kept)")
    sidecar = sidecar_path_for(path)
    if os.path.lexists(sidecar):
        os.unlink(sidecar)
    os.unlink(path)


def _update_index(
    root: str | os.PathLike[str], moved: list[Moved], removed: list[str], db: Any
) -> None:
    """Rows follow the files: moved rows take their new paths, deleted files' rows go.

    An index that does not exist is not created as a side effect of renaming.
    """
    from ckpt_index.index.engine import (
        disposing,
        is_sqlite,
        open_engine,
        resolve_db_url,
        resolve_location,
        sqlite_file,
        write_transaction,
    )
    from ckpt_index.index.store import delete_paths, move_row

    if db is False:
        return
    url = resolve_db_url(db)
    if is_sqlite(url) and not os.path.exists(sqlite_file(url) or ""):
        return
    location = resolve_location()
    with disposing(open_engine(url)) as engine, write_transaction(engine) as conn:
        for old, new, new_sidecar in _with_earlier_moves(conn, root, moved, location):
            old, new = os.path.abspath(old), os.path.abspath(new)
            if storable(old):  # sync never indexes a name that is not text: there is no row
                sidecar = os.path.abspath(new_sidecar) if new_sidecar else None
                move_row(conn, old, new, sidecar_path=sidecar, location=location)
        delete_paths(conn, [os.path.abspath(p) for p in removed], location=location)


def _with_earlier_moves(
    conn: Any, root: str | os.PathLike[str], moved: list[Moved], location: str
) -> list[Moved]:
    """``moved``, and the moves a crashed earlier run made without updating the index: a row whose
    file is gone, whose name is an old format and whose scheme name exists beside it."""
    from sqlalchemy import select

    from ckpt_index.index.store import path_range
    from ckpt_index.index.tables import checkpoints

    c = checkpoints.c
    lo, hi = path_range(os.path.realpath(root))
    known = conn.scalars(
        select(c.checkpoint_path).where(
            c.location == location, c.checkpoint_path >= lo, c.checkpoint_path < hi
        )
    )
    pending = {os.path.abspath(old) for old, _, _ in moved}
    earlier = [m for m in map(_moved_by_an_earlier_run, known) if m is not None]
    return list(moved) + [m for m in earlier if m[0] not in pending]


def _moved_by_an_earlier_run(indexed: str) -> Moved | None:
    path = Path(indexed)
    target = scheme_path(path)
    if target is None or os.path.lexists(path) or not os.path.isfile(target):
        return None
    sidecar = sidecar_path_for(target)
    return indexed, str(target), str(sidecar) if os.path.isfile(sidecar) else None
