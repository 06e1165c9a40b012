"""Moving files into ``gc --trash DIR`` without ever overwriting one, across filesystems too.

A file goes to ``DIR/<root's name>/<path relative to the root>`` (several roots given at once
stay apart, and the layout under each is kept), and a line per file is appended to
``DIR/.ckpt-index-trash.jsonl`` (original path, trashed path, time) to restore from. A taken name
gets ``~1``, ``~2``, ... before its suffix (``epoch-01_step-000010~1.ckpt``, its sidecar
``epoch-01_step-000010~1.metadata.yaml``). A move is ``link()`` then ``unlink()``, which never
overwrites; across filesystems (``EXDEV``) or where hard links are refused, the file is copied
to a temporary name beside its destination, fsynced, linked into place, and only then unlinked
from the root. A trash inside a root (sync would index it) or holding a root is refused.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Sequence
from contextlib import suppress
from datetime import datetime, timezone
from pathlib import Path

from ckpt_index.sidecar.files import CKPT_SUFFIX, SIDECAR_SUFFIX, sidecar_path_for

#: Suffix of a file being copied into the trash (across filesystems), beside its destination.
COPY_SUFFIX = ".ckpt-index-gc-copy"
#: One JSON line per file moved into the trash: where it came from.
TRASH_MANIFEST = ".ckpt-index-trash.jsonl"
#: Errors of ``link()`` that mean "hard links cannot do this move": copy instead.
NO_LINK = {errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK, errno.EOPNOTSUPP}


class TrashError(ValueError):
    """The trash directory cannot be used (inside a root, holding a root): a usage error."""


def under(path: str, directory: str) -> bool:
    return path.startswith(directory.rstrip("/") + "/")


def check_trash(trash: str | os.PathLike[str], roots: Sequence[str]) -> str:
    """The trash as an absolute, resolved path; :class:`TrashError` when it overlaps a root.

    A trash inside a root would be indexed by the next sync of that root (and its files planned
    again); a root inside the trash could have its own files moved onto themselves.
    """
    resolved = os.path.realpath(os.fspath(trash))
    for root in roots:
        real_root = os.path.realpath(root)
        if resolved == real_root or under(resolved, real_root):
            raise TrashError(
                f"--trash {trash} lies inside the root {root}: the next sync would index the "
                "trash; give a directory outside every root"
            )
        if under(real_root, resolved):
            raise TrashError(
                f"--trash {trash} holds the root {root}; give a directory outside every root"
            )
    return resolved


def trash_path(trash: str, root: str, path: str) -> Path:
    """Where ``path`` (below ``root``) goes in the trash: ``trash/<root name>/<relative path>``."""
    name = os.path.basename(root.rstrip("/")) or "root"
    return Path(trash, name, os.path.relpath(path, root))


def free_trash_name(wanted: Path) -> Path:
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


def free_name(wanted: Path) -> Path:
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


def remove_file(source: Path, dest: Path | None) -> None:
    """Unlink ``source``, or move it to ``dest`` in the trash."""
    if dest is None:
        os.unlink(source)
    else:
        _move_into_trash(source, dest)


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
        if exc.errno not in NO_LINK:
            raise
        _copy_into_place(source, dest)
    fsync_directory(dest.parent)
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


def fsync_directory(directory: Path) -> None:
    with suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def log_trash(trash: str, original: Path, trashed: Path) -> None:
    line = {
        "original": str(original),
        "trashed": str(trashed),
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    # A manifest that cannot be written loses no file: each is at its place in the trash.
    with suppress(OSError), open(Path(trash, TRASH_MANIFEST), "a", encoding="utf-8") as manifest:
        manifest.write(json.dumps(line) + "\n")
