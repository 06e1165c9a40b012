"""The worker process: ``python -m ckpt_index.isolation.worker MEMORY_BYTES [TASK]``.

It imports ``TASK``'s module (and the modules that module lists in ``WORKER_IMPORTS``), caps its
address space at what it has mapped then plus ``MEMORY_BYTES``, turns core dumps off and says it
is ready. Then it reads requests from stdin, ``(task name, [args, ...])``, runs the task on each
``args`` and writes one reply per job to stdout, in order:

- ``("ok", value)`` or ``("error", one-line reason)``, plus the warnings the job logged under
  ``ckpt_index`` when there were any;
- ``("memory", None)`` when the job raised MemoryError, after which the worker exits with status
  :data:`~ckpt_index.isolation.protocol.EXIT_MEMORY` (state after a MemoryError is not worth
  trusting).

A worker that cannot resolve ``TASK`` replies ``("refused", reason)`` instead of ``("ready",
pid)`` and exits. It knows nothing of the package's other modules: tasks are found by name
(:func:`~ckpt_index.isolation.protocol.split_task`).
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn

from ckpt_index.isolation.protocol import (
    EXIT_MEMORY,
    TASK_PACKAGE,
    WORKER_IMPORTS,
    frame,
    one_line,
    recv,
    split_task,
)

#: Fault injection for the tests of containment: a worker about to run a job whose first
#: argument is a path containing this text kills itself with the signal named by
#: FAULT_SIGNAL_ENV (default SIGSEGV).
FAULT_ENV = "CKPT_INDEX_WORKER_FAULT"
FAULT_SIGNAL_ENV = "CKPT_INDEX_WORKER_FAULT_SIGNAL"
#: The longest a finished job's reply waits in its worker to be sent with others.
FLUSH_SECONDS = 0.02
#: Log records a job may send back (a file that makes a parser warn a million times is one file).
MAX_LOGS = 20


def main(argv: list[str]) -> None:
    memory_bytes = int(argv[0])
    requests = os.fdopen(0, "rb", buffering=0)
    replies = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # a stray print from a library must not corrupt the replies
    out = _Replies(replies)
    tasks = _Tasks()
    try:
        # Everything the task needs is imported before the ceiling: the budget is the file's.
        for name in argv[1:]:
            tasks.get(name)
    except ValueError as exc:
        out.send(frame(("refused", one_line(str(exc)))))
        out.flush()
        return
    logs = _collect_logs()
    _apply_limits(memory_bytes)
    out.send(frame(("ready", os.getpid())))
    out.flush()
    fault = os.environ.get(FAULT_ENV)
    while True:
        message = recv(requests)
        if message is None:
            return
        name, jobs = message
        try:
            func = tasks.get(name)
        except ValueError as exc:
            func = _refusal(one_line(str(exc)))
        for args in jobs:
            if fault:
                _inject_fault(fault, args)
            out.send(_reply(func, args, out, logs))
        out.flush()  # the end of a chunk: the parent sends the next one as replies arrive


def _reply(
    func: Callable[..., Any], args: tuple[Any, ...], out: _Replies, logs: list[Any]
) -> bytes:
    """The framed reply to one job."""
    try:
        reply: tuple[Any, ...] = ("ok", func(*args))
    except MemoryError:
        out.exit_out_of_memory()
    except RecursionError:
        reply = ("error", "nested too deeply to parse")
    except Exception as exc:  # noqa: BLE001 - contained: this file's reason
        reply = ("error", one_line(f"{exc.__class__.__name__}: {exc}"))
    if logs:
        reply = (*reply, logs[:MAX_LOGS])
        logs.clear()
    try:
        return frame(reply)
    except MemoryError:
        out.exit_out_of_memory()
    except Exception as exc:  # noqa: BLE001 - a value that cannot be sent
        return frame(("error", one_line(f"result cannot be returned: {exc}")))


def _refusal(reason: str) -> Callable[..., Any]:
    def refuse(*args: Any) -> NoReturn:
        raise LookupError(reason)

    return refuse


class _Tasks:
    """Task functions by name, imported on first use (only within the package)."""

    def __init__(self) -> None:
        self.found: dict[str, Callable[..., Any]] = {}

    def get(self, name: str) -> Callable[..., Any]:
        func = self.found.get(name)
        if func is None:
            func = self.found[name] = _resolve(name)
        return func


def _resolve(name: str) -> Callable[..., Any]:
    module_name, function = split_task(name)
    try:
        module = importlib.import_module(module_name)
        for extra in getattr(module, WORKER_IMPORTS, ()):
            if str(extra).startswith(TASK_PACKAGE + "."):
                importlib.import_module(extra)
        func = getattr(module, function)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"unknown task {name!r}: {exc}") from None
    if not callable(func):
        raise ValueError(f"unknown task {name!r}: not a function")
    return func


def _inject_fault(marker: str, args: tuple[Any, ...]) -> None:
    if args and isinstance(args[0], str) and marker in args[0]:
        os.kill(os.getpid(), getattr(signal, os.environ.get(FAULT_SIGNAL_ENV, "SIGSEGV")))
        time.sleep(60)


# ---------------------------------------------------------------------------------------------
# Limits


def _address_space() -> int:
    """Bytes of address space this process has mapped now (VmSize)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _apply_limits(memory_bytes: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # What the interpreter and its imports already mapped, plus the budget for the file.
    ceiling = _address_space() + memory_bytes
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        ceiling = min(ceiling, hard)
    resource.setrlimit(resource.RLIMIT_AS, (ceiling, hard))


# ---------------------------------------------------------------------------------------------
# Replies


class _Replies:
    """A worker's replies, written a few at a time (a system call per job cost as much as the
    boundary checks): when 64 KiB or :data:`FLUSH_SECONDS` of them have gathered, and at the end
    of each chunk. A worker that dies or hangs with some unsent is no problem: the parent runs
    each of its unanswered jobs again alone to find the culprit."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.frames: list[bytes] = []
        self.size = 0
        self.since = 0.0

    def send(self, data: bytes) -> None:
        if not self.frames:
            self.since = time.monotonic()
        self.frames.append(data)
        self.size += len(data)
        if self.size >= 1 << 16 or time.monotonic() - self.since >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        data = memoryview(b"".join(self.frames))
        while data:
            data = data[self.stream.write(data) :]
        self.frames.clear()
        self.size = 0

    def exit_out_of_memory(self) -> NoReturn:
        # The replies before, then this job's: the parent charges the limit to the right job.
        self.frames.append(frame(("memory", None)))
        self.flush()
        os._exit(EXIT_MEMORY)  # state after a MemoryError is not worth trusting


def _collect_logs() -> list[tuple[str, int, str]]:
    """The package's warnings, kept to be re-logged by the parent (a worker has no one to tell)."""
    records: list[tuple[str, int, str]] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if len(records) < MAX_LOGS:
                records.append((record.name, record.levelno, one_line(record.getMessage(), 1000)))

    logger = logging.getLogger(TASK_PACKAGE)
    logger.addHandler(Collect(logging.WARNING))
    logger.propagate = False
    return records


if __name__ == "__main__":
    main(sys.argv[1:])
