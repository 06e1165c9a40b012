"""Listing a synced root: the checkpoints and sidecars below it, and what could not be listed."""

from __future__ import annotations

import os

from ckpt_index.index.records import FileState
from ckpt_index.sidecar.files import CKPT_SUFFIX, SIDECAR_SUFFIX


class Found:
    """The files of one checkpoint path (slotted: a large tree makes hundreds of thousands)."""

    __slots__ = ("ckpt", "sidecar_path", "sidecar")

    def __init__(self) -> None:
        self.ckpt: FileState | None = None
        self.sidecar_path: str | None = None
        self.sidecar: FileState | None = None


def storable(path: str) -> bool:
    """Whether the index can hold ``path``: os.scandir hands out undecodable bytes as surrogates."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def scan(
    root: str,
    rejected: list[tuple[str, str]] | None = None,
    unlisted: list[tuple[str, str]] | None = None,
) -> dict[str, Found]:
    """Checkpoints and sidecars below ``root``, keyed by absolute checkpoint path.

    Files whose names are not UTF-8 cannot be stored; they go to ``rejected`` with a reason.
    Directories that exist but cannot be listed (permissions, I/O errors) go to ``unlisted``:
    what is under them is unknown, which is not the same as gone.
    """
    found: dict[str, Found] = {}
    pending = [root]
    while pending:
        directory = pending.pop()
        try:
            entries = os.scandir(directory)
        except (FileNotFoundError, NotADirectoryError):
            continue  # vanished since it was listed: nothing under it exists
        except OSError as exc:
            if unlisted is not None:
                unlisted.append((directory, f"cannot list {directory}: {exc.strerror or exc}"))
            continue
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
                    indexable = name.endswith(CKPT_SUFFIX) or name.endswith(SIDECAR_SUFFIX)
                    if indexable and not storable(entry.path):
                        if rejected is not None:
                            shown = entry.path.encode("utf-8", "backslashreplace").decode()
                            rejected.append(
                                (shown, "file name is not UTF-8; rename it to index it")
                            )
                        continue
                    if name.endswith(CKPT_SUFFIX):
                        st = entry.stat()
                        found.setdefault(entry.path, Found()).ckpt = FileState(
                            st.st_size, st.st_mtime_ns
                        )
                    elif name.endswith(SIDECAR_SUFFIX):
                        st = entry.stat()
                        key = entry.path[: -len(SIDECAR_SUFFIX)] + CKPT_SUFFIX
                        slot = found.setdefault(key, Found())
                        slot.sidecar_path = entry.path
                        slot.sidecar = FileState(st.st_size, st.st_mtime_ns)
                except OSError:
                    continue  # a dangling link or a file deleted mid-scan
    return found
