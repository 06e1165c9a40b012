"""Carrying out a garbage-collection plan (``ckpt-index gc --apply``), one checkpoint at a time.

:func:`apply_gc` takes a :class:`~ckpt_index.tools.gc_plan.GcPlan` and, for each deletion,
re-checks it against the disk and the index as they are now; any doubt keeps the checkpoint and
is reported as a skip with a one-line reason. A deletion that passes goes in this order:

1. a *marker* ``.NAME.ckpt.ckpt-index-gc`` is written beside the checkpoint (JSON: what is being
   removed, the identities seen when re-checked, and where ``--trash`` puts it), and fsynced;
2. the checkpoint is removed (unlinked, or moved into the trash);
3. its sidecar is removed the same way;
4. its index row is deleted (its metrics cascade; a parameter set no row uses any more is swept
   as sync sweeps it);
5. the marker is removed.

Killed between any two steps, the files on disk are a state a ``sync`` indexes like any other
(at worst an orphan sidecar, which queries hide and sync flags), and nothing the plan kept was
touched. The marker is how the next ``gc --apply`` recognises what an interrupted one left:
before its own deletions it finds the markers in the run folders of its plan and finishes each
(the sidecar, if it is still the one the marker names, then the row), or undoes the start of a
move to the trash when the checkpoint is still in place. A marker is never trusted to name
paths: the files it may act on are the checkpoint beside it and that checkpoint's sidecar, and
a trash destination it names must lie in the trash given now.

``--trash DIR`` moves instead of deleting: a file goes to ``DIR/<root's name>/<path relative to
the root>`` (so several roots given at once stay apart, and the layout under each is kept), and a
line per file is appended to ``DIR/.ckpt-index-trash.jsonl`` (original path, trashed path, time)
to restore from. Nothing in the trash is overwritten: a taken name gets ``~1``, ``~2``, ... before
its suffix (``epoch-01_step-000010~1.ckpt``, its sidecar ``epoch-01_step-000010~1.metadata.yaml``).
A move is ``link()`` then ``unlink()``, which never overwrites; across filesystems (``EXDEV``) or
where hard links are refused, the file is copied to a temporary name in the trash, fsynced,
linked into place, and only then unlinked from the root. A trash inside a root (sync would index
it) or holding a root is refused.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckpt_index.sidecar.files import (
    CKPT_SUFFIX,
    MAX_SIDECAR_BYTES,
    SIDECAR_SUFFIX,
    SidecarError,
    parse_sidecar_bytes,
    sidecar_path_for,
)
from ckpt_index.tools.rename_plan import is_kept_name

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

    from ckpt_index.tools.gc_plan import GcItem, GcPlan

__all__ = [
    "GC_MARKER_SUFFIX",
    "TRASH_MANIFEST",
    "GcResult",
    "TrashError",
    "apply_gc",
    "check_trash",
    "is_gc_file",
    "pending_markers",
]

#: Suffix of the marker a deletion in progress leaves beside its checkpoint (``.NAME`` + this).
GC_MARKER_SUFFIX = ".ckpt-index-gc"
#: Suffix of a file being copied into the trash (across filesystems), beside its destination.
COPY_SUFFIX = ".ckpt-index-gc-copy"
#: Suffix of a marker being written, before it gets its name.
NEW_SUFFIX = ".ckpt-index-gc-new"
#: One JSON line per file moved into the trash: where it came from.
TRASH_MANIFEST = ".ckpt-index-trash.jsonl"
#: A marker is a few hundred bytes; a larger one is not ours.
MAX_MARKER_BYTES = 64 * 1024
#: Errors of ``link()`` that mean "hard links cannot do this move": copy instead.
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK, errno.EOPNOTSUPP}

Progress = Callable[["GcItem", str], None]


class TrashError(ValueError):
    """The trash directory cannot be used (inside a root, holding a root): a usage error."""


@dataclass
class GcResult:
    """What :func:`apply_gc` did: checkpoints removed, deletions skipped (and why), bytes freed.

    ``finished`` lists the checkpoints whose deletion an earlier, interrupted apply had started
    and this one completed (their sidecar and row); they are not counted in ``bytes_freed``.
    """

    deleted: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    bytes_freed: int = 0
    trashed_to: str | None = None
    finished: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "deleted": list(self.deleted),
            "skipped": [{"path": path, "reason": reason} for path, reason in self.skipped],
            "bytes_freed": self.bytes_freed,
            "trashed_to": self.trashed_to,
            "finished": list(self.finished),
        }


class _Skip(Exception):
    """A re-check failed: the checkpoint is kept; ``str()`` is the one-line reason."""


# --------------------------------------------------------------------------------------------
# Names


def marker_path_for(ckpt: str | os.PathLike[str]) -> Path:
    """The marker of a deletion of ``ckpt`` in progress: ``.NAME.ckpt-index-gc`` beside it."""
    path = Path(ckpt)
    return path.with_name(f".{path.name}{GC_MARKER_SUFFIX}")


def is_gc_file(name: str) -> bool:
    """Whether a file name is one gc itself writes in a run folder (not a sign of training)."""
    return name.endswith((GC_MARKER_SUFFIX, COPY_SUFFIX, NEW_SUFFIX))


def _checkpoint_of_marker(marker: Path) -> Path | None:
    name = marker.name
    if not (name.startswith(".") and name.endswith(CKPT_SUFFIX + GC_MARKER_SUFFIX)):
        return None
    return marker.with_name(name[1 : -len(GC_MARKER_SUFFIX)])


def _under(path: str, directory: str) -> bool:
    return path.startswith(directory.rstrip("/") + "/")


def check_trash(trash: str | os.PathLike[str], roots: Sequence[str]) -> str:
    """The trash as an absolute, resolved path; :class:`TrashError` when it overlaps a root.

    A trash inside a root would be indexed by the next sync of that root (and its files planned
    again); a root inside the trash could have its own files moved onto themselves.
    """
    resolved = os.path.realpath(os.fspath(trash))
    for root in roots:
        real_root = os.path.realpath(root)
        if resolved == real_root or _under(resolved, real_root):
            raise TrashError(
                f"--trash {trash} lies inside the root {root}: the next sync would index the "
                "trash; give a directory outside every root"
            )
        if _under(real_root, resolved):
            raise TrashError(
                f"--trash {trash} holds the root {root}; give a directory outside every root"
            )
    return resolved


def _trash_path(trash: str, root: str, path: str) -> Path:
    """Where ``path`` (below ``root``) goes in the trash: ``trash/<root name>/<relative path>``."""
    name = os.path.basename(root.rstrip("/")) or "root"
    return Path(trash, name, os.path.relpath(path, root))


def _free_trash_name(wanted: Path) -> Path:
    """``wanted``, or ``stem~N`` + its suffix when the checkpoint or sidecar name is taken."""

    def taken(candidate: Path) -> bool:
        return os.path.lexists(candidate) or os.path.lexists(sidecar_path_for(candidate))

    if not taken(wanted):
        return wanted
    stem, suffix = (
        (wanted.name[: -len(CKPT_SUFFIX)], CKPT_SUFFIX)
        if wanted.name.endswith(CKPT_SUFFIX)
        else (wanted.stem, wanted.suffix)
    )
    n = 1
    while taken(candidate := wanted.with_name(f"{stem}~{n}{suffix}")):
        n += 1
    return candidate


def _free_name(wanted: Path) -> Path:
    """``wanted``, or ``wanted`` with ``~N`` before its suffix when taken (for a lone sidecar)."""
    if not os.path.lexists(wanted):
        return wanted
    name = wanted.name
    stem, suffix = (
        (name[: -len(SIDECAR_SUFFIX)], SIDECAR_SUFFIX)
        if name.endswith(SIDECAR_SUFFIX)
        else (wanted.stem, wanted.suffix)
    )
    n = 1
    while os.path.lexists(candidate := wanted.with_name(f"{stem}~{n}{suffix}")):
        n += 1
    return candidate


# --------------------------------------------------------------------------------------------
# Moving files


def _fsync_directory(directory: Path) -> None:
    with suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _move_into_trash(source: Path, dest: Path) -> None:
    """Move ``source`` to ``dest`` without ever overwriting ``dest``.

    ``link()`` + ``unlink()`` on one filesystem; otherwise copy to a temporary name beside
    ``dest``, fsync, ``link()`` into place, and only then unlink ``source``. Killed at any point,
    ``source`` or a complete ``dest`` exists (or both: the next apply undoes or finishes it).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, dest, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in _NO_LINK:
            raise
        _copy_into_place(source, dest)
    _fsync_directory(dest.parent)
    os.unlink(source)


def _copy_into_place(source: Path, dest: Path) -> None:
    temporary = dest.with_name(f".{dest.name}{COPY_SUFFIX}")
    with suppress(FileNotFoundError):
        os.unlink(temporary)  # left by a copy that was killed: never a complete file
    if os.path.islink(source):
        os.symlink(os.readlink(source), temporary)
    else:
        with open(source, "rb") as src, open(temporary, "xb") as out:
            shutil.copyfileobj(src, out, 16 << 20)
            out.flush()
            os.fsync(out.fileno())
        shutil.copystat(source, temporary, follow_symlinks=False)
    try:
        try:
            os.link(temporary, dest, follow_symlinks=False)
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                raise
            # A filesystem without hard links: a rename that refuses to overwrite is not in the
            # standard library, so the name is checked right before (the trash is ours).
            if os.path.lexists(dest):
                raise FileExistsError(errno.EEXIST, "exists", str(dest)) from exc
            os.rename(temporary, dest)
            return
    except BaseException:
        with suppress(OSError):
            os.unlink(temporary)
        raise
    os.unlink(temporary)


def _remove(source: Path, dest: Path | None) -> None:
    """Unlink ``source``, or move it to ``dest`` in the trash."""
    if dest is None:
        os.unlink(source)
    else:
        _move_into_trash(source, dest)


def _log_trash(trash: str, original: Path, trashed: Path) -> None:
    line = {
        "original": str(original),
        "trashed": str(trashed),
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    # A manifest that cannot be written loses no file: each is at its place in the trash.
    with suppress(OSError), open(Path(trash, TRASH_MANIFEST), "a", encoding="utf-8") as manifest:
        manifest.write(json.dumps(line) + "\n")


# --------------------------------------------------------------------------------------------
# Markers


def _write_marker(marker: Path, content: dict[str, Any]) -> int:
    """Create the marker (never over another), durable before anything moves, and return its
    descriptor, locked (``flock``) until the deletion is done.

    The lock is how a concurrent ``gc --apply`` tells a live marker from one an interrupted apply
    left: the kernel releases it when the process dies, however it dies. The marker is written
    and locked under a temporary name first, so it is never seen unlocked or half-written.
    """
    temporary = marker.with_name(f"{marker.name}.{os.getpid()}{NEW_SUFFIX}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, json.dumps(content).encode())
        os.fsync(fd)
        try:
            os.link(temporary, marker)  # fails when another marker is there
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise
            if os.path.lexists(marker):  # a filesystem without hard links: check, then rename
                raise FileExistsError(errno.EEXIST, "exists", str(marker)) from exc
            os.rename(temporary, marker)
        else:
            os.unlink(temporary)
    except BaseException:
        with suppress(OSError):
            os.unlink(temporary)
        os.close(fd)
        raise
    _fsync_directory(marker.parent)
    return fd


def _lock_marker(marker: Path) -> int | None:
    """The marker opened and locked, or None when a live apply holds it (or it is gone)."""
    try:
        fd = os.open(marker, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if not os.path.samestat(os.fstat(fd), os.lstat(marker)):
            raise FileNotFoundError(marker)  # finished and replaced meanwhile
    except OSError:
        os.close(fd)
        return None
    return fd


def _read_marker(fd: int) -> dict[str, Any] | None:
    """The marker's content, or None when it is not a regular file of ours that parses."""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_MARKER_BYTES:
            return None
        data = json.loads(os.pread(fd, MAX_MARKER_BYTES + 1, 0))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def pending_markers(plan: GcPlan) -> list[Path]:
    """Markers of interrupted deletions in the run folders of ``plan`` (what the next apply
    finishes). The run folders are those of the plan's items: a run keeps its newest checkpoint,
    so a folder gc deleted from still has a row."""
    found: list[Path] = []
    for run in sorted({item.run for item in plan.items}):
        try:
            with os.scandir(run) as entries:
                names = [e.name for e in entries if e.name.endswith((GC_MARKER_SUFFIX, NEW_SUFFIX))]
        except OSError:
            continue
        found.extend(Path(run, name) for name in sorted(names))
    return found


def _drop_unnamed_marker(path: Path) -> None:
    """A marker killed before it got its name (nothing was moved after it): remove it unless a
    live apply still holds it."""
    fd = _lock_marker(path)
    if fd is not None:
        with suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


# --------------------------------------------------------------------------------------------
# Re-checks


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _sidecar_pinned(sidecar: Path) -> bool:
    """Whether the sidecar says ``pinned: true`` now (read bounded, parsed safely)."""
    from ckpt_index.safe_io import read_bounded

    data = read_bounded(sidecar, MAX_SIDECAR_BYTES, what="sidecar")
    document = parse_sidecar_bytes(data, sidecar)
    if not isinstance(document, dict):
        return False
    # Parsed, not validated: an invalid sidecar (unranked, deleted with --include-unranked)
    # still says whether it is pinned. Any spelling that is not clearly "no" counts as pinned.
    value = document.get("pinned")
    return value is not None and str(value).strip().lower() not in _NOT_PINNED


_NOT_PINNED = ("false", "no", "off", "0", "")


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{max(0, int(seconds))} s ago"
    if seconds < 7200:
        return f"{int(seconds // 60)} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _check_run(item: GcItem, window: float | None) -> None:
    """Skip when a link in the run folder points at the checkpoint, or (``window``) the run is
    active: an entry of its folder changed within ``window`` seconds, as the planner sees it
    (gc's own markers and the folder's own mtime, which gc's deletions set, are no change; for a
    ``checkpoints`` folder, the run folder above it and its other entries count too)."""
    target = os.path.realpath(item.checkpoint_path)
    now = time.time()
    with os.scandir(item.run) as entries:
        for entry in entries:
            if is_gc_file(entry.name):
                continue
            try:
                if entry.is_symlink() and os.path.realpath(entry.path) == target:
                    raise _Skip(f"the target of the link {entry.name}")
                if window is not None:
                    _check_age(entry.name, entry.stat(follow_symlinks=False), now, window)
            except FileNotFoundError:
                continue
    if window is None or os.path.basename(item.run) != "checkpoints":
        return
    parent = os.path.dirname(item.run)
    with suppress(FileNotFoundError):
        _check_age(os.path.basename(parent), os.lstat(parent), now, window)
    with os.scandir(parent) as entries:
        for entry in entries:
            if entry.path != item.run:
                with suppress(FileNotFoundError):
                    _check_age(entry.name, entry.stat(follow_symlinks=False), now, window)


def _check_age(name: str, st: os.stat_result, now: float, window: float) -> None:
    age = now - st.st_mtime
    if age < window:
        raise _Skip(f"run is active ({name} changed {_ago(age)})")


def _recheck(item: GcItem, plan: GcPlan, row: Any) -> tuple[int, int] | None:
    """Raise :class:`_Skip` unless ``item`` may still go; return its sidecar's identity now."""
    path = item.checkpoint_path
    if is_kept_name(os.path.basename(path)):
        raise _Skip("a best*/last* name")
    root = os.path.realpath(item.root)
    if not _under(os.path.realpath(os.path.dirname(path)), root):
        raise _Skip(f"no longer under its root {item.root}")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise _Skip("gone since the plan (run sync to update the index)") from None
    if not stat.S_ISREG(st.st_mode):
        raise _Skip("no longer a regular file")
    if item.ckpt_identity is None or _identity(st) != tuple(item.ckpt_identity):
        raise _Skip("replaced or modified since the plan")
    if st.st_nlink > 1:
        raise _Skip(f"has {st.st_nlink - 1} other hard link(s) now")
    if row is None:
        raise _Skip("no longer in the index (run sync)")
    if row.pinned:
        raise _Skip("pinned (in the index)")
    if row.aliases and json.loads(row.aliases):
        raise _Skip("the target of a link or alias (in the index)")
    sidecar = Path(item.sidecar_path) if item.sidecar_path else sidecar_path_for(path)
    try:
        sst = os.lstat(sidecar)
    except FileNotFoundError:
        sst = None
    sidecar_now = None if sst is None else (sst.st_size, sst.st_mtime_ns)
    planned = None if item.sidecar_identity is None else tuple(item.sidecar_identity)
    if sidecar_now != planned:
        raise _Skip(
            "a sidecar appeared since the plan"
            if planned is None
            else "its sidecar was removed since the plan"
            if sidecar_now is None
            else "its sidecar changed since the plan"
        )
    if sst is not None:
        try:
            if _sidecar_pinned(sidecar):
                raise _Skip("pinned (in its sidecar)")
        except (OSError, SidecarError) as exc:
            raise _Skip(f"its sidecar cannot be read ({_one_line(exc)})") from None
    window = None if plan.policy.include_active else plan.policy.active_window
    _check_run(item, window)
    return sidecar_now


def _one_line(exc: BaseException) -> str:
    text = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
    return " ".join(str(text).split())


# --------------------------------------------------------------------------------------------
# The index


def _current_row(engine: Engine, location: str, path: str) -> Any:
    from sqlalchemy import select

    from ckpt_index.index.tables import checkpoints

    c = checkpoints.c
    with engine.connect() as conn:
        row = conn.execute(
            select(c.id, c.pinned, c.aliases).where(
                c.location == location, c.checkpoint_path == path
            )
        ).first()
        conn.rollback()
    return row


def _delete_row(engine: Engine, location: str, path: str) -> None:
    """Delete the row of ``path`` at ``location`` (metrics cascade, unused parameter sets go)."""
    from ckpt_index.index.engine import run_write
    from ckpt_index.index.store import delete_paths

    def work(conn: Connection) -> None:
        delete_paths(conn, [path], location=location)

    run_write(engine, work)


@contextmanager
def _engine(url: str) -> Iterator[Engine]:
    from ckpt_index.index.engine import disposing, open_engine

    with disposing(open_engine(url)) as engine:
        yield engine


# --------------------------------------------------------------------------------------------
# Applying


def apply_gc(
    plan: GcPlan,
    *,
    trash: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> GcResult:
    """Carry out ``plan``'s deletions (see the module docstring for the order and re-checks).

    ``trash`` moves the files there instead of deleting them (:class:`TrashError` when it lies
    inside a root or holds one). ``progress(item, outcome)`` is called once per deletion with a
    one-line outcome: ``"deleted"``, ``"trashed to PATH"`` or ``"skipped: REASON"``. Interrupted
    deletions of an earlier apply are finished first (``GcResult.finished``).
    """
    from ckpt_index.index.engine import resolve_location

    trash_dir = check_trash(trash, plan.roots) if trash is not None else None
    result = GcResult(trashed_to=trash_dir)
    here = resolve_location()
    if plan.location != here:
        for item in plan.deletions:
            reason = f"planned for location {plan.location!r}; this machine is {here!r}"
            _record_skip(result, item, reason, progress)
        return result
    if trash_dir is not None:
        os.makedirs(trash_dir, exist_ok=True)
    with _engine(plan.db_url) as engine:
        for marker in pending_markers(plan):
            if marker.name.endswith(NEW_SUFFIX):
                _drop_unnamed_marker(marker)
                continue
            fd = _lock_marker(marker)
            if fd is None:
                result.skipped.append((str(marker), "another gc --apply is working on it"))
                continue
            try:
                _finish(marker, fd, plan, trash_dir, engine, result)
            finally:
                os.close(fd)
        for item in plan.deletions:
            _apply_one(item, plan, trash_dir, engine, result, progress)
    return result


def _record_skip(result: GcResult, item: GcItem, reason: str, progress: Progress | None) -> None:
    result.skipped.append((item.checkpoint_path, reason))
    if progress is not None:
        progress(item, f"skipped: {reason}")


def _apply_one(
    item: GcItem,
    plan: GcPlan,
    trash: str | None,
    engine: Engine,
    result: GcResult,
    progress: Progress | None,
) -> None:
    ckpt = Path(item.checkpoint_path)
    marker = marker_path_for(ckpt)
    try:
        if os.path.lexists(marker):
            raise _Skip(f"another gc is deleting it ({marker.name} exists)")
        row = _current_row(engine, plan.location, item.checkpoint_path)
        sidecar_identity = _recheck(item, plan, row)
    except _Skip as skip:
        _record_skip(result, item, str(skip), progress)
        return
    except OSError as exc:
        _record_skip(result, item, f"cannot be checked: {_one_line(exc)}", progress)
        return
    dest = _free_trash_name(_trash_path(trash, item.root, str(ckpt))) if trash else None
    content = {
        "version": 1,
        "checkpoint": str(ckpt),
        "ckpt_identity": list(item.ckpt_identity or ()),
        "sidecar_identity": list(sidecar_identity) if sidecar_identity else None,
        "root": item.root,
        "trash": trash,
        "trashed_to": str(dest) if dest else None,
        "location": plan.location,
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        fd = _write_marker(marker, content)
    except OSError as exc:
        _record_skip(result, item, f"cannot write its marker: {_one_line(exc)}", progress)
        return
    try:
        _remove_item(item, dest, sidecar_identity, trash, marker, engine, plan, result, progress)
    finally:
        os.close(fd)


def _remove_item(
    item: GcItem,
    dest: Path | None,
    sidecar_identity: tuple[int, int] | None,
    trash: str | None,
    marker: Path,
    engine: Engine,
    plan: GcPlan,
    result: GcResult,
    progress: Progress | None,
) -> None:
    """Steps 2-5 of a deletion, its marker written and locked."""
    ckpt = Path(item.checkpoint_path)
    try:
        _remove(ckpt, dest)
    except OSError as exc:
        _undo_start(ckpt, dest, marker)
        _record_skip(result, item, f"cannot be removed: {_one_line(exc)}", progress)
        return
    if trash and dest:
        _log_trash(trash, ckpt, dest)
    problem = _remove_sidecar(ckpt, sidecar_identity, dest, trash)
    if problem is None:
        _delete_row(engine, plan.location, str(ckpt))
    if problem is None or not problem.retry:
        os.unlink(marker)
    result.deleted.append(str(ckpt))
    result.bytes_freed += item.size
    outcome = f"trashed to {dest}" if dest else "deleted"
    if problem is not None:
        outcome += f" ({problem.reason})"
    if progress is not None:
        progress(item, outcome)


def _undo_start(ckpt: Path, dest: Path | None, marker: Path) -> None:
    """The checkpoint could not be removed: drop the marker (and a trash name of the same file)."""
    if dest is not None and os.path.lexists(ckpt):
        with suppress(OSError):
            if os.path.samestat(os.lstat(ckpt), os.lstat(dest)):
                os.unlink(dest)
    with suppress(OSError):
        os.unlink(marker)


@dataclass(frozen=True)
class _SidecarProblem:
    reason: str  # one line
    retry: bool  # the next apply tries again (the marker stays)


def _remove_sidecar(
    ckpt: Path, identity: tuple[int, int] | None, ckpt_dest: Path | None, trash: str | None
) -> _SidecarProblem | None:
    """Remove the sidecar of a removed checkpoint if it is still the one re-checked.

    A sidecar changed since (someone wrote to it) is no longer gc's to remove: it stays, an
    orphan that sync indexes and flags. One that cannot be removed (permissions) stays too, and
    the next apply tries again.
    """
    sidecar = sidecar_path_for(ckpt)
    try:
        st = os.lstat(sidecar)
    except FileNotFoundError:
        return None
    if identity is None or (st.st_size, st.st_mtime_ns) != tuple(identity):
        return _SidecarProblem("its sidecar changed meanwhile and was left in place", False)
    dest = None
    if ckpt_dest is not None and trash is not None:
        dest = _free_name(sidecar_path_for(ckpt_dest))
    try:
        _remove(sidecar, dest)
    except OSError as exc:
        reason = f"its sidecar cannot be removed: {_one_line(exc)}; the next gc --apply retries"
        return _SidecarProblem(reason, True)
    if trash and dest:
        _log_trash(trash, sidecar, dest)
    return None


def _finish(
    marker: Path, fd: int, plan: GcPlan, trash: str | None, engine: Engine, result: GcResult
) -> None:
    """Finish (or undo the start of) the deletion an interrupted apply left ``marker`` for
    (opened and locked as ``fd``)."""
    ckpt = _checkpoint_of_marker(marker)
    content = _read_marker(fd)
    if ckpt is None or content is None or content.get("checkpoint") != str(ckpt):
        result.skipped.append((str(marker), "not a marker gc can read: left as it is"))
        return
    if content.get("location") != plan.location:
        result.skipped.append((str(ckpt), "marker of another location: left as it is"))
        return
    recorded = content.get("trash")
    dest = _marker_dest(content, trash)
    if recorded is not None and dest is None and _may_be_in_other_trash(ckpt):
        result.skipped.append(
            (
                str(ckpt),
                f"an interrupted gc was moving it to the trash {recorded}; "
                "run gc --apply with that --trash to finish it",
            )
        )
        return
    if os.path.lexists(ckpt):
        _undo_partial_copy(ckpt, content, dest)
        os.unlink(marker)
        return
    identity = content.get("sidecar_identity")
    problem = _remove_sidecar(
        ckpt, tuple(identity) if isinstance(identity, list) else None, dest, trash
    )
    if problem is not None:
        result.skipped.append((str(ckpt), f"interrupted deletion: {problem.reason}"))
        if problem.retry:
            return
    else:
        _delete_row(engine, plan.location, str(ckpt))
        result.finished.append(str(ckpt))
    os.unlink(marker)


def _may_be_in_other_trash(ckpt: Path) -> bool:
    """Whether finishing needs the trash an interrupted move used: the checkpoint is gone (its
    sidecar follows it there), or still has a second name (a link into that trash)."""
    try:
        return os.lstat(ckpt).st_nlink > 1
    except FileNotFoundError:
        return True


def _marker_dest(content: dict[str, Any], trash: str | None) -> Path | None:
    """The trash destination a marker names, if it lies in the trash given now."""
    recorded, dest = content.get("trash"), content.get("trashed_to")
    if recorded is None or trash is None or not isinstance(dest, str):
        return None
    if os.path.realpath(str(recorded)) != trash or not _under(os.path.abspath(dest), trash):
        return None
    return Path(os.path.abspath(dest))


def _undo_partial_copy(ckpt: Path, content: dict[str, Any], dest: Path | None) -> None:
    """The checkpoint is still in place: a trash name or copy the interrupted move made of it is
    a duplicate; remove it so that the checkpoint is planned afresh (and not kept as "linked")."""
    if dest is None:
        return
    with suppress(FileNotFoundError):
        os.unlink(dest.with_name(f".{dest.name}{COPY_SUFFIX}"))
    try:
        st, dst = os.lstat(ckpt), os.lstat(dest)
    except OSError:
        return
    planned = content.get("ckpt_identity")
    if os.path.samestat(st, dst):
        os.unlink(dest)
    elif (
        isinstance(planned, list)
        and _identity(st) == tuple(planned)
        and stat.S_ISREG(dst.st_mode)
        and dst.st_size == st.st_size
    ):
        # A complete copy (it was fsynced before it got this name) of an unchanged checkpoint.
        os.unlink(dest)
