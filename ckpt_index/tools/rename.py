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

from ckpt_index.sidecar.files import (
    CKPT_SUFFIX,
    SIDECAR_SUFFIX,
    checkpoint_path_for,
    sidecar_path_for,
)
from ckpt_index.sources.naming import parse_checkpoint_name, scheme_checkpoint_name
from ckpt_index.sync.scan import storable

log = logging.getLogger("ckpt_index.tools.rename")
OLD_FORMATS = ("legacy_double", "legacy", "lightning")
KEPT_PREFIXES = ("best", "last")
RELINK_SUFFIX = ".ckpt-index-relink"


@dataclass
class Action:
    kind: str  # rename | relink | delete | skip | error
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
    relinked: int = 0
    actions: list[Action] = field(default_factory=list)

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


@dataclass
class _Step:
    """One action of the plan and what carrying it out needs."""

    action: Action
    relinks: list[Action] = field(default_factory=list)  # links to rewrite before the old name goes
    link_was: dict[str, str] = field(default_factory=dict)  # link path -> what it pointed at
    identity: tuple[int, int] | None = None  # (st_dev, st_ino) the file had when planned
    ckpt: str | None = None  # for a moved sidecar: the checkpoint path the index knows it by


def is_kept_name(name: str) -> bool:
    """``best*`` and ``last*`` names are never renamed or deleted."""
    return name.lower().startswith(KEPT_PREFIXES)


def plan(
    root: str | os.PathLike[str], *, delete_old: bool = False, keep_from_epoch: int | None = None
) -> list[Action]:
    """What a rename of ``root`` would do, without doing it (links to rewrite follow their rename)."""
    return [
        a for step in _plan(root, delete_old, keep_from_epoch) for a in (step.action, *step.relinks)
    ]


def _plan(
    root: str | os.PathLike[str], delete_old: bool, keep_from_epoch: int | None
) -> list[_Step]:
    if delete_old and keep_from_epoch is None:
        raise ValueError("delete_old needs keep_from_epoch: checkpoints of earlier epochs go")
    if not Path(root).is_dir():
        raise NotADirectoryError(f"{root}: not a directory")
    # Resolved as sync resolves it: the paths acted on are the paths the index holds.
    tree = _Tree(Path(os.path.realpath(root)))
    steps: list[_Step] = []
    claimed: set[str] = set()
    for path, st in tree.checkpoints:
        step = _plan_checkpoint(path, st, tree, claimed, delete_old, keep_from_epoch)
        if step is not None:
            steps.append(step)
    for link in tree.links:
        name = parse_checkpoint_name(link.name)
        if (
            link.name.endswith(CKPT_SUFFIX)
            and not is_kept_name(link.name)
            and (name.format in OLD_FORMATS or _too_old(name.epoch, delete_old, keep_from_epoch))
        ):
            steps.append(_Step(Action("skip", str(link), reason="a symbolic link: left as it is")))
    for sidecar in tree.orphan_sidecars:
        step = _plan_orphan_sidecar(sidecar, claimed)
        if step is not None:
            steps.append(step)
    relinked = {link.path for step in steps for link in step.relinks}
    for link in tree.links:
        if str(link) not in relinked and (step := _plan_dangling_link(link, tree)) is not None:
            steps.append(step)
    return steps


class _Tree:
    """Everything under ``root`` (directory links not followed), read once by lstat."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.checkpoints: list[tuple[Path, os.stat_result]] = []
        self.orphan_sidecars: list[Path] = []
        self.links: list[Path] = []
        #: (directory realpath, name) of a link's target -> the links pointing at it.
        self.link_targets: dict[tuple[str, str], list[Path]] = {}
        #: (st_dev, st_ino) of every file a link under root points at.
        self.linked_inodes: set[tuple[int, int]] = set()
        for directory, dirs, files in os.walk(root, followlinks=False):
            dirs.sort()
            here = Path(directory)
            # os.walk lists a link to a directory under dirs; it is still a link to look at.
            for name in sorted(files + [d for d in dirs if os.path.islink(here / d)]):
                self._add(here / name)

    def _add(self, path: Path) -> None:
        try:
            st = os.lstat(path)
        except OSError:
            return  # gone since the listing
        if stat.S_ISLNK(st.st_mode):
            if not path.name.endswith(RELINK_SUFFIX):
                self._add_link(path)
        elif not stat.S_ISREG(st.st_mode):
            return
        elif path.name.endswith(CKPT_SUFFIX):
            self.checkpoints.append((path, st))
        elif path.name.endswith(SIDECAR_SUFFIX) and not os.path.lexists(checkpoint_path_for(path)):
            self.orphan_sidecars.append(path)

    def _add_link(self, link: Path) -> None:
        try:
            content = os.readlink(link)
        except OSError:
            return
        self.links.append(link)
        self.link_targets.setdefault(_key(link.parent / content), []).append(link)
        try:
            target = os.stat(link)
        except OSError:
            return  # dangling (or a loop)
        self.linked_inodes.add((target.st_dev, target.st_ino))


def _key(path: Path) -> tuple[str, str]:
    """A file's identity by name: its directory resolved, its own name not (it may be a link)."""
    return os.path.realpath(path.parent), path.name


def _plan_checkpoint(
    path: Path,
    st: os.stat_result,
    tree: _Tree,
    claimed: set[str],
    delete_old: bool,
    keep_from_epoch: int | None,
) -> _Step | None:
    name = parse_checkpoint_name(path.name)
    old_format = name.format in OLD_FORMATS
    too_old = _too_old(name.epoch, delete_old, keep_from_epoch)
    if not (old_format or too_old):
        return None
    identity = (st.st_dev, st.st_ino)
    if is_kept_name(path.name):
        return _Step(Action("skip", str(path), reason="best*/last* names are kept as they are"))
    target = (
        path.with_name(scheme_checkpoint_name(name.epoch, name.step))
        if (old_format and name.epoch is not None and name.step is not None)
        else None
    )
    if target is not None and _same_file(target, st):
        # An interrupted rename (both names, one inode): finish it before anything else.
        claimed.add(str(target))
        action = Action("rename", str(path), str(target), "completing an interrupted rename")
        return _move_step(action, path, target, tree, identity)
    kept = None
    if too_old:
        if identity in tree.linked_inodes:
            kept = "kept: the target of a link"
        elif st.st_nlink > 1:
            kept = f"kept: it has {st.st_nlink - 1} other hard link(s)"
        else:
            return _Step(
                Action("delete", str(path), reason=f"epoch {name.epoch} < {keep_from_epoch}"),
                identity=identity,
            )
    if target is None:
        return _Step(Action("skip", str(path), reason=kept or "the name gives no step"))
    if (
        os.path.lexists(target)
        or os.path.lexists(sidecar_path_for(target))
        or str(target) in claimed
    ):
        return _Step(Action("skip", str(path), str(target), kept or "target exists"))
    claimed.add(str(target))
    return _move_step(Action("rename", str(path), str(target), kept), path, target, tree, identity)


def _move_step(
    action: Action, source: Path, target: Path, tree: _Tree, identity: tuple[int, int]
) -> _Step:
    """A rename, with every link under root that points at ``source`` rewritten to ``target``."""
    step = _Step(action, identity=identity)
    for link in tree.link_targets.get(_key(source), []):
        content = os.readlink(link)
        # Same directory: only the last component changes, relative or absolute alike.
        new = os.path.join(os.path.dirname(content), target.name)
        step.relinks.append(Action("relink", str(link), new, f"pointed at {content}"))
        step.link_was[str(link)] = content
    return step


def _scheme_path(path: Path) -> Path | None:
    """Where a rename moves ``path``: the scheme name beside it, or None for a name it leaves."""
    if is_kept_name(path.name):
        return None
    name = parse_checkpoint_name(path.name)
    if name.format not in OLD_FORMATS or name.epoch is None or name.step is None:
        return None
    return path.with_name(scheme_checkpoint_name(name.epoch, name.step))


def _plan_orphan_sidecar(sidecar: Path, claimed: set[str]) -> _Step | None:
    """A sidecar whose checkpoint an earlier, interrupted rename already moved to its scheme name."""
    ckpt = checkpoint_path_for(sidecar)
    target = _scheme_path(ckpt)
    if target is None:
        return None
    new_sidecar = sidecar_path_for(target)
    try:
        if not stat.S_ISREG(os.lstat(target).st_mode) or str(target) in claimed:
            return None
    except OSError:
        return None  # an ordinary orphan sidecar: not ours to move
    if os.path.lexists(new_sidecar):
        if not _same_file(new_sidecar, os.lstat(sidecar)):
            return None
        reason = "completing an interrupted rename (sidecar linked, old name left)"
    else:
        reason = f"the sidecar of {target.name}, left behind by an interrupted rename"
    claimed.add(str(target))
    return _Step(Action("rename", str(sidecar), str(new_sidecar), reason), ckpt=str(ckpt))


def _plan_dangling_link(link: Path, tree: _Tree) -> _Step | None:
    """A link an earlier rename left pointing at an old name whose scheme name now exists."""
    content = os.readlink(link)
    pointed = link.parent / content
    if os.path.lexists(pointed):
        return None
    if not Path(os.path.realpath(pointed.parent)).is_relative_to(tree.root):
        return None  # what lies outside root is not ours to guess about
    target = _scheme_path(pointed)
    if target is None or not os.path.isfile(target):
        return None
    new = os.path.join(os.path.dirname(content), target.name)
    return _Step(
        Action("relink", str(link), new, f"pointed at the old name {content}"),
        link_was={str(link): content},
    )


def _too_old(epoch: int | None, delete_old: bool, keep_from_epoch: int | None) -> bool:
    return (
        delete_old and epoch is not None and keep_from_epoch is not None and epoch < keep_from_epoch
    )


def _same_file(path: Path | str, st: os.stat_result) -> bool:
    try:
        other = os.lstat(path)
    except OSError:
        return False
    return (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino)


# ------------------------------------------------------------------------------------- apply
def rename_checkpoints(
    root: str | os.PathLike[str],
    *,
    dry_run: bool = False,
    delete_old: bool = False,
    keep_from_epoch: int | None = None,
    db: Any = None,
) -> RenameSummary:
    """Apply :func:`plan`; update the index when ``db`` (or the default index) exists.

    ``db=False`` leaves every index alone (as ``MetadataCallback(db=False)``).
    """
    summary = RenameSummary()
    moved: list[tuple[str, str, str | None]] = []
    removed: list[str] = []
    counter = {
        "rename": "renamed",
        "delete": "deleted",
        "skip": "skipped",
        "error": "errors",
        "relink": "relinked",
    }
    for step in _plan(root, delete_old, keep_from_epoch):
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
        for a in (action, *done):
            summary.actions.append(a)
            setattr(summary, counter[a.kind], getattr(summary, counter[a.kind]) + 1)
            log.info(
                "%s%s %s%s",
                "[dry run] " if dry_run else "",
                a.kind,
                a.path,
                f" -> {a.target}"
                if a.target and a.kind in ("rename", "relink")
                else f" ({a.reason})"
                if a.reason
                else "",
            )
    if not dry_run:
        _update_index(root, moved, removed, db)
    return summary


def _apply(
    step: _Step, moved: list[tuple[str, str, str | None]], removed: list[str]
) -> list[Action]:
    """Carry out one step; return the links it rewrote. Moves and deletions are noted for the index."""
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


def _move(source: Path, target: Path, step: _Step) -> list[Action]:
    """Move a checkpoint, its sidecar and the links to it; return the links rewritten.

    The old checkpoint name is unlinked last, after the new name, the sidecar and the links are
    in place: a rerun after a crash at any point sees both names on one inode and finishes.
    """
    st = os.lstat(source)
    if step.identity is not None and (st.st_dev, st.st_ino) != step.identity:
        raise _Changed(f"{source.name} was replaced since the plan")
    if not _same_file(target, st):
        # follow_symlinks=False: a link() of a symlink moves the link, never what it points at.
        os.link(source, target, follow_symlinks=False)
    old_sidecar = sidecar_path_for(source)
    if os.path.lexists(old_sidecar):
        _move_sidecar(old_sidecar, sidecar_path_for(target))
    done = []
    for relink in step.relinks:
        _relink(Path(relink.path), relink.target or "", step.link_was[relink.path])
        done.append(relink)
    if not _same_file(target, os.lstat(source)):
        raise _Changed(f"{target.name} is no longer {source.name}")
    os.unlink(source)
    return done


def _move_sidecar(old: Path, new: Path) -> None:
    st = os.lstat(old)
    if not os.path.lexists(new):
        os.link(old, new, follow_symlinks=False)
    elif not _same_file(new, st):
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
    """Delete a checkpoint planned for deletion, sidecar first: a rerun deletes what a crash left."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != identity or st.st_nlink > 1:
        raise _Changed(f"{path.name} changed since the plan (kept)")
    sidecar = sidecar_path_for(path)
    if os.path.lexists(sidecar):
        os.unlink(sidecar)
    os.unlink(path)


def _update_index(
    root: str | os.PathLike[str],
    moved: list[tuple[str, str, str | None]],
    removed: list[str],
    db: Any,
) -> None:
    """Rows follow the files: moved rows take their new paths, deleted files' rows go.

    Rows a crashed earlier run left at old names (the files moved, the index write never came)
    are found again: a row whose file is gone, whose name is an old format and whose scheme name
    exists beside it moves there as well.
    """
    from sqlalchemy import select

    from ckpt_index.index.engine import (
        is_sqlite,
        open_engine,
        resolve_db_url,
        resolve_location,
        sqlite_file,
        write_transaction,
    )
    from ckpt_index.index.store import delete_paths, path_range
    from ckpt_index.index.tables import checkpoints

    if db is False:
        return
    url = resolve_db_url(db)
    if is_sqlite(url) and not os.path.exists(sqlite_file(url) or ""):
        return  # no index to update; do not create one as a side effect of renaming
    engine = open_engine(url)
    location = resolve_location()
    c = checkpoints.c
    try:
        with write_transaction(engine) as conn:
            lo, hi = path_range(os.path.realpath(root))
            known = conn.scalars(
                select(c.checkpoint_path).where(
                    c.location == location, c.checkpoint_path >= lo, c.checkpoint_path < hi
                )
            )
            pending = {os.path.abspath(old) for old, _, _ in moved}
            moved = list(moved) + [
                m
                for m in map(_moved_by_an_earlier_run, known)
                if m is not None and m[0] not in pending
            ]
            for old, new, new_sidecar in moved:
                old, new = os.path.abspath(old), os.path.abspath(new)
                if not storable(old):
                    continue  # sync never indexes a name that is not text: there is no row
                row = conn.scalar(
                    select(c.id).where(c.location == location, c.checkpoint_path == old)
                )
                if row is None:
                    continue
                # A row at the new path (a sync during an interrupted rename, or a stale row) would
                # collide with the moved one, which carries the sidecar's metadata.
                delete_paths(conn, [new], location=location)
                conn.execute(
                    checkpoints.update()
                    .where(c.id == row)
                    .values(
                        checkpoint_path=new,
                        sidecar_path=os.path.abspath(new_sidecar) if new_sidecar else None,
                    )
                )
            delete_paths(conn, [os.path.abspath(p) for p in removed], location=location)
    finally:
        engine.dispose()


def _moved_by_an_earlier_run(indexed: str) -> tuple[str, str, str | None] | None:
    path = Path(indexed)
    target = _scheme_path(path)
    if target is None or os.path.lexists(path) or not os.path.isfile(target):
        return None
    sidecar = sidecar_path_for(target)
    return indexed, str(target), str(sidecar) if os.path.isfile(sidecar) else None
