"""Opening and reading files under a synced root, which are all untrusted.

Every file is opened without blocking (a FIFO or a device named ``x.ckpt`` must not hang a sync),
checked with ``fstat`` to be a regular file of a sane size before a byte is read, and read with
bounded reads only. A sparse file (a 20 GiB ``run.wandb`` holding a few blocks) is refused by its
apparent size like any other huge file, so the cost of refusing it does not grow with that size.

Example::

    data = read_bounded("outputs/run/.hydra/config.yaml", 2 << 20, what="Hydra config")
    with open_regular(path, max_size=None) as (handle, st):
        head = handle.read(512)
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class UnsafeFileError(OSError):
    """A file that cannot be read safely; ``reason`` is one line (``str()`` names the path too)."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"{os.fspath(path)}: {reason}")
        self.path = Path(path)
        self.reason = reason


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "is a directory"
    if stat.S_ISFIFO(mode):
        return "is a FIFO, not a regular file"
    if stat.S_ISSOCK(mode):
        return "is a socket, not a regular file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device, not a regular file"
    return "not a regular file"


def human_bytes(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError  # pragma: no cover


def open_fd(path: str | os.PathLike[str], max_size: int | None) -> tuple[int, os.stat_result]:
    """The regular file at ``path`` opened read-only: ``(descriptor, fstat)``; the caller closes it.

    Links are followed (a checkpoint may be a link to its best copy); what they lead to must be a
    regular file. Raises :class:`UnsafeFileError` for anything else or a file over ``max_size``.
    """
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer that never comes. O_NOCTTY: a
        # terminal device never becomes our controlling terminal.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise UnsafeFileError(path, f"cannot open: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFileError(path, _kind(st.st_mode))
        if max_size is not None and st.st_size > max_size:
            reason = f"file is {human_bytes(st.st_size)}, over the {human_bytes(max_size)} limit"
            if st.st_blocks * 512 < st.st_size // 2:
                reason += " (a sparse file)"
            raise UnsafeFileError(path, reason)
        # O_NONBLOCK stays set: it has no effect on a regular file's reads, and clearing it
        # would cost two more system calls per file.
    except BaseException:
        os.close(fd)
        raise
    return fd, st


@contextmanager
def open_regular(
    path: str | os.PathLike[str], max_size: int | None
) -> Iterator[tuple[io.FileIO, os.stat_result]]:
    """An unbuffered binary handle on a regular file (see :func:`open_fd`) and its ``fstat``."""
    fd, st = open_fd(path, max_size)
    with io.FileIO(fd, "rb", closefd=True) as handle:
        yield handle, st


def read_bounded(path: str | os.PathLike[str], limit: int, *, what: str = "file") -> bytes:
    """The whole content of a regular file of at most ``limit`` bytes, read with one bounded read.

    A file that grew past the limit since ``fstat`` is refused as well.
    Raises :class:`UnsafeFileError` with a one-line reason (naming ``what``).
    """
    try:
        with open_regular(path, limit) as (handle, _):
            data = _read_upto(handle, limit + 1)
    except UnsafeFileError as exc:
        raise UnsafeFileError(path, f"{what} {exc.reason}") from None
    except OSError as exc:
        raise UnsafeFileError(path, f"{what} cannot be read: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise UnsafeFileError(path, f"{what} grew past the {human_bytes(limit)} limit while read")
    return data


def _read_upto(handle: io.FileIO, n: int) -> bytes:
    chunks: list[bytes] = []
    remaining = n
    while remaining > 0:
        want = min(remaining, 16 << 20)
        chunk = handle.read(want)
        chunks.append(chunk)
        remaining -= len(chunk)
        if len(chunk) < want:  # a regular file's short read is its end: no extra read call
            break
    return b"".join(chunks)
