"""The marker of a ``gc --apply`` deletion in progress: ``.NAME.ckpt.ckpt-index-gc`` beside the
checkpoint, written (JSON: what is removed, the identities re-checked, where ``--trash`` puts it)
and fsynced before anything moves, removed last.

The apply holds its marker locked (``flock``) until the deletion is done: a concurrent apply
tells a live marker from one an interrupted apply left by trying the lock, which the kernel
releases when a process dies, however it dies. A marker is written and locked under a temporary
name (``...ckpt-index-gc-new``) and linked into place, so it is never seen unlocked or
half-written. Sync ignores these names (neither ``.ckpt`` nor ``.metadata.yaml``), and the
planner does not take them for signs of training (:func:`is_gc_file`).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckpt_index.sidecar.files import CKPT_SUFFIX
from ckpt_index.tools.gc_trash import COPY_SUFFIX, NO_LINK, fsync_directory

if TYPE_CHECKING:
    from ckpt_index.tools.gc_plan import GcPlan

#: Suffix of the marker a deletion in progress leaves beside its checkpoint (``.NAME`` + this).
GC_MARKER_SUFFIX = ".ckpt-index-gc"
#: Suffix of a marker being written, before it gets its name.
NEW_SUFFIX = ".ckpt-index-gc-new"
#: A marker is a few hundred bytes; a larger one is not ours.
MAX_MARKER_BYTES = 64 * 1024


def marker_path_for(ckpt: str | os.PathLike[str]) -> Path:
    """The marker of a deletion of ``ckpt`` in progress: ``.NAME.ckpt-index-gc`` beside it."""
    path = Path(ckpt)
    return path.with_name(f".{path.name}{GC_MARKER_SUFFIX}")


#: Suffixes of the files gc itself writes in a run folder (no sign of training).
GC_SUFFIXES = (GC_MARKER_SUFFIX, COPY_SUFFIX, NEW_SUFFIX)


def is_gc_file(name: str) -> bool:
    """Whether a file name is one gc itself writes in a run folder (not a sign of training)."""
    return name.endswith(GC_SUFFIXES)


def checkpoint_of_marker(marker: Path) -> Path | None:
    """The checkpoint a marker's name is about (the only file it may lead gc to act on)."""
    name = marker.name
    if not (name.startswith(".") and name.endswith(CKPT_SUFFIX + GC_MARKER_SUFFIX)):
        return None
    return marker.with_name(name[1 : -len(GC_MARKER_SUFFIX)])


def write_marker(marker: Path, content: dict[str, Any]) -> int:
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
            if exc.errno not in NO_LINK:
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
    fsync_directory(marker.parent)
    return fd


def lock_marker(marker: Path) -> int | None:
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


def read_marker(fd: int) -> dict[str, Any] | None:
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


def drop_unnamed_marker(path: Path) -> None:
    """A marker killed before it got its name (nothing was moved after it): remove it unless a
    live apply still holds it."""
    fd = lock_marker(path)
    if fd is not None:
        with suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)
