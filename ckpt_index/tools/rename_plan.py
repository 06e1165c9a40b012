"""Planning a rename: what ``ckpt-index rename`` would do under a root, decided before anything
is touched (see :mod:`ckpt_index.tools.rename` for the rules and for carrying a plan out).

The tree is read once, by ``lstat`` (directory links are not followed). Each checkpoint in an old
name format gets a step that moves it to its scheme name, unless the name is ``best*``/``last*``,
the scheme name is taken, or another step already claims it; with ``delete_old``, checkpoints of
epochs before ``keep_from_epoch`` are deleted unless something else still refers to them (a
symbolic link under the root, another hard link). Links pointing at a moved name are rewritten
in the same step. Leftovers of an interrupted run (both names on one inode, a sidecar left
beside a moved checkpoint, a link left dangling at an old name) get the steps that finish it.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ckpt_index.sidecar.files import (
    CKPT_SUFFIX,
    SIDECAR_SUFFIX,
    checkpoint_path_for,
    sidecar_path_for,
)
from ckpt_index.sources.naming import parse_checkpoint_name, scheme_checkpoint_name

#: Name formats a rename moves to the scheme (``epoch-XX_step-XXXXXX.ckpt``).
OLD_FORMATS = ("legacy_double", "legacy", "lightning")
#: Names that already say what the file is: never renamed, never deleted.
KEPT_PREFIXES = ("best", "last")
#: Suffix of the temporary link that replaces a link being rewritten.
RELINK_SUFFIX = ".ckpt-index-relink"


@dataclass
class Action:
    kind: str  # rename | relink | delete | skip | error
    path: str
    target: str | None = None
    reason: str | None = None


@dataclass
class Step:
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
    """What a rename of ``root`` would do, without doing it (links to rewrite follow their
    rename)."""
    return [
        a
        for step in build_plan(root, delete_old, keep_from_epoch)
        for a in (step.action, *step.relinks)
    ]


def build_plan(
    root: str | os.PathLike[str], delete_old: bool, keep_from_epoch: int | None
) -> list[Step]:
    if delete_old and keep_from_epoch is None:
        raise ValueError("delete_old needs keep_from_epoch: checkpoints of earlier epochs go")
    if not Path(root).is_dir():
        raise NotADirectoryError(f"{root}: not a directory")
    # Resolved as sync resolves it: the paths acted on are the paths the index holds.
    tree = _Tree(Path(os.path.realpath(root)))
    steps: list[Step] = []
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
            steps.append(Step(Action("skip", str(link), reason="a symbolic link: left as it is")))
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
) -> Step | None:
    name = parse_checkpoint_name(path.name)
    old_format = name.format in OLD_FORMATS
    too_old = _too_old(name.epoch, delete_old, keep_from_epoch)
    if not (old_format or too_old):
        return None
    identity = (st.st_dev, st.st_ino)
    if is_kept_name(path.name):
        return Step(Action("skip", str(path), reason="best*/last* names are kept as they are"))
    target = (
        path.with_name(scheme_checkpoint_name(name.epoch, name.step))
        if (old_format and name.epoch is not None and name.step is not None)
        else None
    )
    if target is not None and same_file(target, st):
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
            return Step(
                Action("delete", str(path), reason=f"epoch {name.epoch} < {keep_from_epoch}"),
                identity=identity,
            )
    if target is None:
        return Step(Action("skip", str(path), reason=kept or "the name gives no step"))
    if (
        os.path.lexists(target)
        or os.path.lexists(sidecar_path_for(target))
        or str(target) in claimed
    ):
        return Step(Action("skip", str(path), str(target), kept or "target exists"))
    claimed.add(str(target))
    return _move_step(Action("rename", str(path), str(target), kept), path, target, tree, identity)


def _move_step(
    action: Action, source: Path, target: Path, tree: _Tree, identity: tuple[int, int]
) -> Step:
    """A rename, with every link under root that points at ``source`` rewritten to ``target``."""
    step = Step(action, identity=identity)
    for link in tree.link_targets.get(_key(source), []):
        content = os.readlink(link)
        # Same directory: only the last component changes, relative or absolute alike.
        new = os.path.join(os.path.dirname(content), target.name)
        step.relinks.append(Action("relink", str(link), new, f"pointed at {content}"))
        step.link_was[str(link)] = content
    return step


def scheme_path(path: Path) -> Path | None:
    """Where a rename moves ``path``: the scheme name beside it, or None for a name it leaves."""
    if is_kept_name(path.name):
        return None
    name = parse_checkpoint_name(path.name)
    if name.format not in OLD_FORMATS or name.epoch is None or name.step is None:
        return None
    return path.with_name(scheme_checkpoint_name(name.epoch, name.step))


def _plan_orphan_sidecar(sidecar: Path, claimed: set[str]) -> Step | None:
    """A sidecar whose checkpoint an earlier, interrupted rename already moved to its scheme
    name."""
    ckpt = checkpoint_path_for(sidecar)
    target = scheme_path(ckpt)
    if target is None:
        return None
    new_sidecar = sidecar_path_for(target)
    try:
        if not stat.S_ISREG(os.lstat(target).st_mode) or str(target) in claimed:
            return None
    except OSError:
        return None  # an ordinary orphan sidecar: not ours to move
    if os.path.lexists(new_sidecar):
        if not same_file(new_sidecar, os.lstat(sidecar)):
            return None
        reason = "completing an interrupted rename (sidecar linked, old name left)"
    else:
        reason = f"the sidecar of {target.name}, left behind by an interrupted rename"
    claimed.add(str(target))
    return Step(Action("rename", str(sidecar), str(new_sidecar), reason), ckpt=str(ckpt))


def _plan_dangling_link(link: Path, tree: _Tree) -> Step | None:
    """A link an earlier rename left pointing at an old name whose scheme name now exists."""
    content = os.readlink(link)
    pointed = link.parent / content
    if os.path.lexists(pointed):
        return None
    if not Path(os.path.realpath(pointed.parent)).is_relative_to(tree.root):
        return None  # what lies outside root is not ours to guess about
    target = scheme_path(pointed)
    if target is None or not os.path.isfile(target):
        return None
    new = os.path.join(os.path.dirname(content), target.name)
    return Step(
        Action("relink", str(link), new, f"pointed at the old name {content}"),
        link_was={str(link): content},
    )


def _too_old(epoch: int | None, delete_old: bool, keep_from_epoch: int | None) -> bool:
    return (
        delete_old and epoch is not None and keep_from_epoch is not None and epoch < keep_from_epoch
    )


def same_file(path: Path | str, st: os.stat_result) -> bool:
    try:
        other = os.lstat(path)
    except OSError:
        return False
    return (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino)
