"""Listing a synced root: the checkpoints and sidecars below it, and what could not be listed.

One checkpoint, one row: a symbolic or hard link to a checkpoint is an *alias* of the file it
points to (Lightning's ``save_last="link"``, UniqueModelCheckpoint's ``best-*`` links), listed in
that file's ``aliases`` rather than indexed again. A link whose target is missing, or lies
outside the synced root (never read: the tree is untrusted), is reported, not indexed. A
``last*.ckpt`` that is a byte copy of another checkpoint beside it is marked ``is_last``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ckpt_index.index.records import FileState
from ckpt_index.sidecar.files import CKPT_SUFFIX, SIDECAR_SUFFIX

#: Bytes compared at each end of a ``last.ckpt`` and a same-sized checkpoint beside it.
FINGERPRINT_BYTES = 64 * 1024
#: Same-sized checkpoints a ``last.ckpt`` is compared with, at most (keeps a sync bounded).
MAX_COPY_CANDIDATES = 8


class Found:
    """The files of one checkpoint path (slotted: a large tree makes hundreds of thousands)."""

    __slots__ = ("ckpt", "sidecar_path", "sidecar", "aliases", "is_last")

    def __init__(self) -> None:
        self.ckpt: FileState | None = None
        self.sidecar_path: str | None = None
        self.sidecar: FileState | None = None
        #: Absolute paths of the links (symbolic or hard) to this checkpoint, sorted. A tuple,
        #: shared while empty: a tree of 100,000 checkpoints makes no 100,000 empty lists.
        self.aliases: tuple[str, ...] = ()
        #: A ``last*.ckpt`` whose bytes are those of another checkpoint beside it.
        self.is_last = False


def alias_columns(item: Found) -> dict[str, Any]:
    """The ``aliases`` and ``is_last`` columns of the row of ``item``."""
    aliases = json.dumps(list(item.aliases)) if item.aliases else None
    return {"aliases": aliases, "is_last": item.is_last}


def alias_patch(row: Any, item: Found) -> dict[str, Any]:
    """The ``aliases``/``is_last`` columns of a stored ``row``, when its links changed."""
    columns = alias_columns(item)
    if row.aliases == columns["aliases"] and row.is_last == columns["is_last"]:
        return {}
    return columns


def storable(path: str) -> bool:
    """Whether the index can hold ``path``: os.scandir hands out undecodable bytes as surrogates."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _Listing:
    """What one walk of a root collects besides the checkpoints and sidecars."""

    def __init__(self) -> None:
        self.symlinks: list[str] = []
        #: Checkpoint paths by (device, inode), for files with more than one name.
        self.inodes: dict[tuple[int, int], list[str]] = {}


def scan(
    root: str,
    rejected: list[tuple[str, str]] | None = None,
    unlisted: list[tuple[str, str]] | None = None,
    links: list[tuple[str, str]] | None = None,
) -> dict[str, Found]:
    """Checkpoints and sidecars below ``root``, keyed by absolute checkpoint path.

    Files whose names are not UTF-8 cannot be stored; they go to ``rejected`` with a reason.
    Directories that exist but cannot be listed (permissions, I/O errors) go to ``unlisted``:
    what is under them is unknown, which is not the same as gone. Links to checkpoints become
    the ``aliases`` of their target; those that cannot be (dangling, pointing out of ``root``,
    at no checkpoint) go to ``links`` with a reason.
    """
    found: dict[str, Found] = {}
    listing = _Listing()
    pending = [root]
    while pending:
        _list_directory(pending.pop(), found, pending, listing, rejected, unlisted)
    _fold_hard_links(found, listing.inodes)
    _fold_symlinks(root, found, listing.symlinks, links)
    _mark_last_copies(found)
    return found


def _list_directory(
    directory: str,
    found: dict[str, Found],
    pending: list[str],
    listing: _Listing,
    rejected: list[tuple[str, str]] | None,
    unlisted: list[tuple[str, str]] | None,
) -> None:
    """Record the checkpoints and sidecars of one directory; queue its subdirectories.

    One call per directory, the entries handled inline: a sync of an unchanged tree is mostly
    this loop, so it stays free of per-entry calls.
    """
    try:
        entries = os.scandir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return  # vanished since it was listed: nothing under it exists
    except OSError as exc:
        if unlisted is not None:
            unlisted.append((directory, f"cannot list {directory}: {exc.strerror or exc}"))
        return
    plain_directory = storable(directory)
    with entries:
        for entry in entries:
            name = entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                    if not name.endswith(SIDECAR_SUFFIX):
                        continue
                    # A directory where a sidecar belongs is recorded as one, so that it is
                    # reported invalid ("is a directory") rather than silently ignored.
                is_ckpt = name.endswith(CKPT_SUFFIX)
                if not is_ckpt and not name.endswith(SIDECAR_SUFFIX):
                    continue
                path = entry.path
                # An ASCII name in a storable directory is storable: no encoding per file.
                if not (plain_directory and name.isascii()) and not storable(path):
                    if rejected is not None:
                        shown = path.encode("utf-8", "backslashreplace").decode()
                        rejected.append((shown, "file name is not UTF-8; rename it to index it"))
                    continue
                if not is_ckpt:
                    st = entry.stat()
                    slot = found.setdefault(path[: -len(SIDECAR_SUFFIX)] + CKPT_SUFFIX, Found())
                    slot.sidecar_path = path
                    slot.sidecar = FileState(st.st_size, st.st_mtime_ns)
                elif entry.is_symlink():
                    listing.symlinks.append(path)
                else:
                    st = entry.stat(follow_symlinks=False)
                    found.setdefault(path, Found()).ckpt = FileState(st.st_size, st.st_mtime_ns)
                    if st.st_nlink > 1:
                        listing.inodes.setdefault((st.st_dev, st.st_ino), []).append(path)
            except OSError:
                continue  # a file deleted mid-scan


def _alias_rank(path: str) -> tuple[bool, str]:
    """Hard links have no "real" name: prefer one that is not ``last*`` or ``best-*``."""
    name = os.path.basename(path)
    return (name.startswith(("last", "best-")), path)


def _fold_hard_links(found: dict[str, Found], inodes: dict[tuple[int, int], list[str]]) -> None:
    for paths in inodes.values():
        if len(paths) < 2:
            continue
        primary, *others = sorted(paths, key=_alias_rank)
        for other in others:
            # The alias's own sidecar (the callback writes one beside every link) describes the
            # same checkpoint: the row is the primary's.
            found.pop(other, None)
        found[primary].aliases = tuple(sorted((*found[primary].aliases, *others)))


def _fold_symlinks(
    root: str,
    found: dict[str, Found],
    symlinks: list[str],
    report: list[tuple[str, str]] | None,
) -> None:
    """Make each symbolic link an alias of its target, or report why it cannot be one."""
    # Targets are real paths; found's keys are below ``root`` as given (validate does not resolve
    # a symlinked root): a target below the real root is looked up under ``root``.
    real_prefix = os.path.realpath(root).rstrip("/") + "/"
    prefix = root.rstrip("/") + "/"
    touched: set[str] = set()
    for link in symlinks:
        found.pop(link, None)  # the link's own sidecar describes its target: not an orphan
        # realpath resolves every hop once; on a cycle it stops at a link of the cycle.
        target = os.path.realpath(link)
        reason = None
        if os.path.islink(target):
            reason = f"dangling link: a cycle of links through {target}"
        elif not target.startswith(real_prefix):
            reason = f"links to {target}, outside the synced root; not indexed"
        elif not os.path.lexists(target):
            reason = f"dangling link: {target} does not exist"
        elif (target := prefix + target[len(real_prefix) :]) not in found or (
            found[target].ckpt is None
        ):
            reason = f"links to {target}, which is not a checkpoint file; not indexed"
        if reason is not None:
            if report is not None:
                report.append((link, reason))
            continue
        found[target].aliases += (link,)
        touched.add(target)
    for target in touched:
        found[target].aliases = tuple(sorted(found[target].aliases))


def _fingerprint(path: str, size: int) -> bytes | None:
    """The first and last :data:`FINGERPRINT_BYTES` of a regular file (never through a link)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        head = os.pread(fd, FINGERPRINT_BYTES, 0)
        tail = os.pread(fd, FINGERPRINT_BYTES, max(0, size - FINGERPRINT_BYTES))
    except OSError:
        return None
    finally:
        os.close(fd)
    return head + tail


def is_copy(path: str, others: list[str]) -> bool:
    """Whether ``path`` has the size and first and last bytes of one of ``others`` (bounded: at
    most :data:`MAX_COPY_CANDIDATES` compared, :data:`FINGERPRINT_BYTES` read at each end)."""
    try:
        size = os.stat(path, follow_symlinks=False).st_size
        same = [o for o in others if os.stat(o, follow_symlinks=False).st_size == size]
    except OSError:
        return False
    mine = _fingerprint(path, size) if same else None
    return mine is not None and any(
        _fingerprint(o, size) == mine for o in same[:MAX_COPY_CANDIDATES]
    )


def _mark_last_copies(found: dict[str, Found]) -> None:
    """Mark each ``last*.ckpt`` whose bytes match a same-sized checkpoint in its directory."""
    # "/last" in p: a substring test in C, so that a tree without last*.ckpt costs next to nothing.
    lasts = [
        p
        for p, item in found.items()
        if "/last" in p and item.ckpt is not None and p.rpartition("/")[2].startswith("last")
    ]
    if not lasts:
        return
    directories = {p.rpartition("/")[0] for p in lasts}
    by_place: dict[tuple[str, int], list[str]] = {}
    for path, item in found.items():
        directory, _, name = path.rpartition("/")
        if directory in directories and item.ckpt is not None and not name.startswith("last"):
            by_place.setdefault((directory, item.ckpt.size), []).append(path)
    for last in lasts:
        size = found[last].ckpt.size  # type: ignore[union-attr]
        candidates = by_place.get((last.rpartition("/")[0], size), [])[:MAX_COPY_CANDIDATES]
        if not candidates:
            continue
        mine = _fingerprint(last, size)
        found[last].is_last = mine is not None and any(
            _fingerprint(other, size) == mine for other in candidates
        )
