"""The ``lstat`` scans of run folders a gc plan needs, run in a helper process beside the planner.

A plan at 100,000 checkpoints makes some 130,000 ``lstat`` calls, and on a virtual machine the
kernel's part of each is a few microseconds: the scans cost as much as the index query and the
decisions together. Python threads cannot overlap them (each call hands the interpreter lock
back and forth, which made a threaded scan slower than a serial one), so, as ``git``'s
``core.preloadIndex`` stats in parallel, :class:`FolderScans` hands the folders to a child
process while the parent reads the index and decides: the child scans each folder as soon as
the parent names it, and answers in that order.

The child is this file run by the same interpreter (``python -I -S -X utf8=N gc_scan.py``, N
as the parent's: no site packages, nothing of the package imported, so it starts in about 10
ms). It first writes how it decodes file names, then reads NUL-terminated folder paths on stdin
and writes, for batches of them, a 4-byte length and a ``marshal``-ed list of ``(path, scan)``.
It only lists and stats: no file is opened or read, no link is followed but to stat its target.
When it cannot start, dies, decodes names otherwise, answers out of turn or falls silent, the
parent scans the remaining folders itself (:func:`scan_folder`, the same function), so a plan's
content never depends on the child.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import select
import stat
import struct
import subprocess
import sys
from collections import deque
from typing import Any

#: What :func:`scan_folder` returns: (files, others, sidecars, links, newest_ns, error,
#: ignored), where files maps a regular file's name to (st_dev, st_ino, st_size, st_mtime_ns,
#: st_nlink); others lists the names that are no regular file; sidecars the regular files whose
#: names end in the sidecar suffix (listed, not stat'ed); links (target st_dev, target st_ino,
#: name) of each symbolic link whose target exists; newest_ns the newest change of the folder's
#: entries (and, for a ``checkpoints`` folder, of the run folder above and its other entries);
#: error the reason the folder could not be listed, else None; ignored the names ending in an
#: ignored suffix (listed, not stat'ed).
Scan = tuple[
    dict[str, tuple[int, int, int, int, int]],
    list[str],
    list[str],
    list[tuple[int, int, str]],
    int,
    str | None,
    list[str],
]

#: Fields of a file's tuple in :data:`Scan`.
DEV, INO, SIZE, MTIME_NS, NLINK = range(5)

_LENGTH = struct.Struct("<I")
_BATCH = 64  # folders per answer: small enough that the parent's wait for its next folder is short


def scan_folder(
    path: str,
    sidecar_suffix: str,
    training_suffixes: tuple[str, ...],
    ignored_suffixes: tuple[str, ...],
) -> Scan:
    """The entries of the run folder ``path`` as :data:`Scan` describes them.

    The folder's own mtime is not a change (deleting a checkpoint, gc --apply itself, sets it);
    training shows in the entries it writes. Names ending in ``ignored_suffixes`` (gc's own
    files) are skipped, and sidecars are listed without a stat: training writes one right after
    its checkpoint, while ``pin``, ``convert`` and editors change them without training.
    """
    files: dict[str, tuple[int, int, int, int, int]] = {}
    others: list[str] = []
    ignored: list[str] = []
    sidecars: list[str] = []
    links: list[tuple[int, int, str]] = []
    newest = 0
    error = None
    is_regular, is_link = stat.S_ISREG, stat.S_ISLNK
    try:
        # Listed through a descriptor: each entry is then stat'ed by its name in the folder
        # (fstatat), not by its whole path looked up again from /.
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with os.scandir(fd) as entries:
                for entry in entries:
                    name = entry.name
                    if name.endswith(sidecar_suffix) and entry.is_file(follow_symlinks=False):
                        sidecars.append(name)  # the directory entry's type: no system call
                        continue
                    # Checkpoints and sidecars (most entries) are no gc file: skip the test.
                    if not name.endswith(training_suffixes) and name.endswith(ignored_suffixes):
                        ignored.append(name)
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue  # gone since the listing
                    mtime_ns = st.st_mtime_ns
                    if mtime_ns > newest:
                        newest = mtime_ns
                    if is_regular(st.st_mode):
                        files[name] = (st.st_dev, st.st_ino, st.st_size, mtime_ns, st.st_nlink)
                        continue
                    others.append(name)
                    if is_link(st.st_mode):
                        try:
                            target = os.stat(name, dir_fd=fd)
                        except OSError:
                            continue  # dangling, or a loop
                        links.append((target.st_dev, target.st_ino, name))
        finally:
            os.close(fd)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        error = getattr(exc, "strerror", None) or str(exc)
    # Lightning writes its logs beside checkpoints/: a run is active while they change.
    if os.path.basename(path) == "checkpoints":
        newest = max(newest, _newest_entry_ns(os.path.dirname(path), "checkpoints"))
    return files, others, sidecars, links, newest, error, ignored


def _newest_entry_ns(path: str, skip: str) -> int:
    """The newest change among ``path`` and its entries (no recursion) but ``skip`` (looked at
    entry by entry: its mtime changes when gc deletes from it); 0 if unreadable."""
    newest = 0
    try:
        newest = os.lstat(path).st_mtime_ns
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with os.scandir(fd) as entries:
                for entry in entries:
                    if entry.name == skip:
                        continue
                    try:
                        newest = max(newest, entry.stat(follow_symlinks=False).st_mtime_ns)
                    except OSError:
                        continue
        finally:
            os.close(fd)
    except OSError:
        pass
    return newest


class FolderScans:
    """The scans of the folders a plan names with :meth:`add`, by a child process when one
    starts (else, or once it fails, in this process); :meth:`get` returns one. Use as a context
    manager: leaving it ends the child.

    The child answers in the order it was asked, each answer naming its folder; it first says
    which file system encoding it decodes names with. An answer out of turn, another encoding,
    a broken frame, a dead child or one silent for :data:`_SILENT_S` while waited for: the
    folders not answered yet are scanned here instead (so a plan never depends on the child).
    """

    def __init__(
        self,
        sidecar_suffix: str,
        training_suffixes: tuple[str, ...],
        ignored_suffixes: tuple[str, ...],
        *,
        child: bool = True,
    ) -> None:
        self.args = (sidecar_suffix, tuple(training_suffixes), tuple(ignored_suffixes))
        self.results: dict[str, Scan] = {}
        self.asked: set[str] = set()  # folders sent to the child and not answered yet
        self.order: deque[str] = deque()  # the same, in the order they were sent
        self.greeted = False  # the child's encoding was read and is ours
        self.failure: str | None = None  # why the child was given up, if it was
        self.out = bytearray()  # folder names not yet written to the child
        self.inbox = bytearray()  # the child's answers not yet parsed
        self.proc: subprocess.Popen[bytes] | None = self._start() if child else None

    def _start(self) -> subprocess.Popen[bytes] | None:
        if not sys.executable or not os.path.isfile(__file__):
            return None
        command = [
            sys.executable,
            "-I",  # no PYTHON* variables, no user site, not the working folder on the path
            "-S",  # no site packages: the child imports nothing but the standard library
            "-X",
            f"utf8={sys.flags.utf8_mode}",  # -I drops PYTHONUTF8: name the mode outright
            __file__,
            *self.args[:1],
            "/".join(self.args[1]),
            "/".join(self.args[2]),
        ]
        try:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                bufsize=0,
            )
        except (OSError, ValueError):
            return None
        assert proc.stdin is not None and proc.stdout is not None
        for fd in (proc.stdin.fileno(), proc.stdout.fileno()):
            os.set_blocking(fd, False)
            _widen_pipe(fd)
        return proc

    def __enter__(self) -> FolderScans:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def in_child(self) -> bool:
        """Whether a child process is (still) doing the scans."""
        return self.proc is not None

    def add(self, folders: list[str]) -> None:
        """Start scanning ``folders`` (in the child; in this process, :meth:`get` scans)."""
        if self.proc is None:
            return
        for folder in folders:
            if folder in self.asked or folder in self.results:
                continue
            try:
                name = os.fsencode(folder)
            except UnicodeError:
                continue  # no file system name: scanned here (and found unreadable)
            if b"\0" in name:
                continue
            self.asked.add(folder)
            self.order.append(folder)
            self.out += name + b"\0"
        self._pump(wait=False)

    def get(self, folder: str) -> Scan:
        """The scan of ``folder``: the child's answer (waiting for it), else one made here."""
        if self.out and self.proc is not None:
            self._pump(wait=False)  # names the pipe could not take yet
        result = self.results.pop(folder, None)
        if result is not None:
            return result
        while self.proc is not None and folder in self.asked:
            self._pump(wait=True)
            result = self.results.pop(folder, None)
            if result is not None:
                return result
        return scan_folder(folder, *self.args)

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait()

    def _pump(self, wait: bool) -> None:
        """Write what the child can take, read what it answered; with ``wait``, first block
        until one of the two can move (or the child is gone, or silent too long)."""
        proc = self.proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        wfd, rfd = proc.stdin.fileno(), proc.stdout.fileno()
        try:
            if wait:
                poller = select.poll()  # not select(): descriptors may be past 1023
                poller.register(rfd, select.POLLIN)
                if self.out:
                    poller.register(wfd, select.POLLOUT)
                if not poller.poll(_SILENT_S * 1000):
                    raise TimeoutError("the scanning process is silent")
            if self.out:
                try:
                    del self.out[: os.write(wfd, self.out)]
                except BlockingIOError:
                    pass
            while True:
                try:
                    data = os.read(rfd, 1 << 20)
                except BlockingIOError:
                    break
                if not data:
                    raise EOFError("the scanning process ended")
                self.inbox += data
            self._parse()
        except (OSError, EOFError, ValueError, TypeError) as exc:  # TimeoutError: an OSError
            self._give_up(f"{type(exc).__name__}: {exc}")

    def _parse(self) -> None:
        inbox = self.inbox
        start = 0
        while len(inbox) - start >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(inbox, start)
            end = start + _LENGTH.size + size
            if len(inbox) < end:
                break
            frame = marshal.loads(bytes(inbox[start + _LENGTH.size : end]))
            start = end
            if not self.greeted:
                if tuple(frame) != _encoding():
                    raise ValueError(f"the scanning process decodes names as {frame!r}")
                self.greeted = True
                continue
            for folder, scan in frame:
                if not self.order or folder != self.order[0]:
                    raise ValueError(f"the scanning process answered {folder!r} out of turn")
                self.order.popleft()
                self.asked.discard(folder)
                self.results[folder] = tuple(scan)
        del inbox[:start]

    def _give_up(self, reason: str) -> None:
        """The child failed: the folders it did not answer are scanned here."""
        self.failure = reason
        self.close()
        self.asked.clear()
        self.order.clear()
        self.out.clear()
        self.inbox.clear()


_SILENT_S = 60  # seconds a waited-for child may say nothing before its folders are scanned here


def _encoding() -> tuple[str, str]:
    """How this interpreter decodes file names (the child's must be the parent's)."""
    return (sys.getfilesystemencoding(), sys.getfilesystemencodeerrors())


def _widen_pipe(fd: int) -> None:
    """Room in a pipe to the child for the answers (or names) while the other side is busy
    (Linux only; elsewhere the pipe stays as it is)."""
    try:
        import fcntl
    except ImportError:
        return
    size = getattr(fcntl, "F_SETPIPE_SZ", None)
    if size is not None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, size, 1 << 20)


def _child(argv: list[str]) -> None:
    sidecar_suffix = argv[0]
    # Suffixes of file names hold no "/": it separates them.
    training = tuple(s for s in argv[1].split("/") if s)
    ignored = tuple(s for s in argv[2].split("/") if s)
    out = sys.stdout.buffer

    def send(obj: Any) -> None:
        payload = marshal.dumps(obj)
        out.write(_LENGTH.pack(len(payload)) + payload)
        out.flush()

    send(_encoding())
    pending = b""
    while True:
        data = os.read(0, 1 << 16)
        if not data:
            return
        pending += data
        *names, pending = pending.split(b"\0")
        for start in range(0, len(names), _BATCH):
            batch = []
            for name in names[start : start + _BATCH]:
                folder = os.fsdecode(name)
                batch.append((folder, scan_folder(folder, sidecar_suffix, training, ignored)))
            send(batch)


if __name__ == "__main__":
    try:
        _child(sys.argv[1:])
    except (BrokenPipeError, KeyboardInterrupt):
        pass
