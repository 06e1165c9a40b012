"""One worker process seen from its parent: started, fed requests, read without blocking, killed.

The worker's side is :mod:`ckpt_index.isolation.worker`; the pool that schedules jobs on these
processes is :mod:`ckpt_index.isolation.pool`.
"""

from __future__ import annotations

import io
import os
import select
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from ckpt_index.isolation.protocol import (
    EXIT_MEMORY,
    HEADER,
    MAX_REPLY_BYTES,
    PlainUnpickler,
    frame,
)

#: Pipe size asked for (Linux's default cap for unprivileged processes, /proc/sys/fs/pipe-max-size).
_PIPE_BYTES = 1 << 20
#: A worker that has not started after this long never will (imports take ~0.2 s).
_START_SECONDS = 60.0
_WORKER_MODULE = "ckpt_index.isolation.worker"


class WorkerStartError(RuntimeError):
    """A worker process could not start: the environment is broken, not a file."""


class BadReply(Exception):
    pass


class WorkerProcess:
    """One worker process, started for ``task`` (whose modules it imports before its limits)."""

    def __init__(self, memory_bytes: int, task: str) -> None:
        import ckpt_index

        package_root = os.path.dirname(os.path.dirname(os.path.abspath(ckpt_index.__file__)))
        env = dict(os.environ)
        # The worker must import this very ckpt_index, whatever sys.path the caller built.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", _WORKER_MODULE, str(memory_bytes), task],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            close_fds=True,
            start_new_session=True,
            bufsize=0,
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.fd = self.proc.stdout.fileno()
        self.buffer = bytearray()
        os.set_blocking(self.fd, False)
        _widen_pipe(self.fd)
        #: Job indices sent and not yet answered, in the order the worker runs them.
        self.pending: deque[int] = deque()
        self.deadline = 0.0
        self.ready = False
        #: Running one job alone (a suspect of an earlier failure): it gets no other job meanwhile.
        self.alone = False

    def wait_ready(self) -> None:
        """Wait until the worker says its imports are done and its limits set.

        Raises ValueError when it could not find its task, WorkerStartError when it did not start.
        """
        if self.ready:
            return
        deadline = time.monotonic() + _START_SECONDS
        first: list[Any] = []
        while not first:
            left = deadline - time.monotonic()
            readable = left > 0 and select.select([self.fd], [], [], left)[0]
            got = self.replies() if readable else None
            if got is None:
                self.kill()
                raise WorkerStartError(
                    f"a parsing worker ({sys.executable} -m {_WORKER_MODULE}) did not start "
                    f"(exit status {self.proc.returncode}); run it by hand to see why"
                )
            first.extend(got)
        if first[0][0] == "refused":
            self.kill()
            raise ValueError(first[0][1])
        self.ready = True

    def send(self, task: str, jobs: list[tuple[int, tuple[Any, ...]]], seconds: float) -> None:
        if not self.pending:  # else the job it is on keeps its deadline
            self.deadline = time.monotonic() + seconds
        self.pending.extend(index for index, _ in jobs)
        assert self.proc.stdin is not None
        data = memoryview(frame((task, [args for _, args in jobs])))
        while data:
            data = data[self.proc.stdin.write(data) or 0 :]

    def replies(self) -> Iterator[Any] | None:
        """Complete replies read now; None when the worker closed its end (it died)."""
        try:
            chunk = os.read(self.fd, 1 << 20)
        except BlockingIOError:
            return iter(())
        if not chunk:
            return None
        self.buffer += chunk
        out = []
        view, start = memoryview(self.buffer), 0
        try:
            while len(view) - start >= HEADER.size:
                (size,) = HEADER.unpack_from(view, start)
                if size > MAX_REPLY_BYTES:
                    raise BadReply(f"worker reply of {size} bytes")
                end = start + HEADER.size + size
                if len(view) < end:
                    break
                try:
                    out.append(PlainUnpickler(io.BytesIO(view[start + HEADER.size : end])).load())
                except Exception as exc:  # noqa: BLE001
                    raise BadReply(f"unreadable worker reply: {exc}") from None
                start = end
        finally:
            view.release()
        del self.buffer[:start]  # once per read: not a memmove of the buffer per reply
        return iter(out)

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.proc.kill()
        self.reap()

    def reap(self) -> int:
        self.close()
        return self.proc.wait()

    def close(self) -> None:
        """Let an idle worker go: it exits when it reads the end of its input.

        Not waited for (an interpreter's shutdown costs ~50 ms per worker); subprocess reaps
        finished children when it next starts one, and the parent's exit does otherwise.
        """
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass


def _widen_pipe(fd: int) -> None:
    """Room for hundreds of replies in the pipe, so that workers go on parsing while the caller
    writes a batch to the database instead of blocking on a full 64 KiB pipe (Linux only)."""
    try:
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), _PIPE_BYTES)
    except (OSError, ImportError):
        pass  # an unprivileged process may be capped lower: the default size still works


def death_reason(status: int, memory_text: str) -> str:
    """Why a worker that exited with ``status`` failed, in one line."""
    if status == EXIT_MEMORY:
        return f"over the {memory_text} memory limit"
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        if name == "SIGKILL":  # the kernel's OOM killer, or someone's kill -9
            return "reader killed (SIGKILL)"
        return f"reader crashed: {name}"
    return f"reader exited with status {status}"
