"""Untrusted parsing in worker processes, under a memory ceiling and a time budget per file.

Checkpoint pickles, W&B logs and Hydra or W&B configs come from files anyone could have written.
The parsers bound their own work, but a bug in them, in libyaml, or in CPython's C code (hashing
a tuple nested a million deep recurses until the stack overflows) must cost one file, not the
sync. So each file is parsed by a worker process:

- a fresh interpreter (``python -m ckpt_index.isolation.pool``), never a fork: a fork of a process
  with other threads (a notebook, the training callback's writer) can inherit a held lock;
- its address space capped (``RLIMIT_AS``: what it had at start plus :attr:`Limits.memory_bytes`)
  and core dumps off;
- watched by the parent with a wall-clock budget per file (:attr:`Limits.seconds`).

A worker that crashes, is killed or exceeds a limit yields a one-line reason for the file it was
reading (``reader crashed: SIGSEGV``, ``over the 512 MiB memory limit``, ``over the 10 s time
limit``) and a fresh worker takes the rest. Nothing is retried in-process.

Results come back pickled, but only plain data is accepted (:class:`_PlainUnpickler`), so a
worker cannot hand the parent anything that runs code.

Example::

    with WorkerPool(workers=2) as pool:
        for outcome in pool.map("infer", [(path,) for path in paths]):
            print(outcome.value if outcome.ok else outcome.reason)
"""

from __future__ import annotations

import io
import os
import pickle
import select
import selectors
import signal
import struct
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

#: Environment overrides of the default limits (in MiB and seconds).
MEMORY_ENV = "CKPT_INDEX_WORKER_MEMORY_MB"
SECONDS_ENV = "CKPT_INDEX_WORKER_SECONDS"
DEFAULT_MEMORY_MB = 512
DEFAULT_SECONDS = 30.0
#: Exit status of a worker that hit its memory ceiling (MemoryError was raised).
_EXIT_MEMORY = 86
#: No reply may exceed this (a worker's memory is capped anyway; this caps the parent's).
_MAX_REPLY_BYTES = 256 << 20
_HEADER = struct.Struct("<Q")
#: Pipe size asked for (Linux's default cap for unprivileged processes, /proc/sys/fs/pipe-max-size).
_PIPE_BYTES = 1 << 20
#: The longest a finished job's reply waits in its worker to be sent with others.
_FLUSH_SECONDS = 0.02
#: A worker that has not started after this long never will (imports take ~0.2 s).
_START_SECONDS = 60.0


@dataclass(frozen=True)
class Limits:
    """What one worker may use for one file."""

    memory_bytes: int = DEFAULT_MEMORY_MB << 20
    seconds: float = DEFAULT_SECONDS

    @classmethod
    def from_env(cls) -> Limits:
        """The defaults, overridden by ``CKPT_INDEX_WORKER_MEMORY_MB`` / ``_SECONDS`` when set."""
        memory = os.environ.get(MEMORY_ENV)
        seconds = os.environ.get(SECONDS_ENV)
        try:
            return cls(
                memory_bytes=(int(memory) << 20) if memory else DEFAULT_MEMORY_MB << 20,
                seconds=float(seconds) if seconds else DEFAULT_SECONDS,
            )
        except ValueError:
            raise ValueError(f"{MEMORY_ENV} and {SECONDS_ENV} must be numbers") from None

    def memory_text(self) -> str:
        return f"{self.memory_bytes >> 20} MiB"


@dataclass(frozen=True)
class Outcome:
    """The result of one job: ``value`` when ``ok``, else a one-line ``reason``.

    ``contained`` is true when the worker itself failed (crash, limit): the file is unreadable.
    """

    ok: bool
    value: Any = None
    reason: str | None = None
    contained: bool = False
    #: (logger name, level, message) of the warnings the job logged in its worker.
    logs: tuple[tuple[str, int, str], ...] = ()


# ---------------------------------------------------------------------------------------------
# Worker side


#: Fault injection for the tests of containment: a worker about to read a file whose path
#: contains this text kills itself with the signal named by FAULT_SIGNAL_ENV (default SIGSEGV).
FAULT_ENV = "CKPT_INDEX_WORKER_FAULT"
FAULT_SIGNAL_ENV = "CKPT_INDEX_WORKER_FAULT_SIGNAL"


def _inject_fault(path: str) -> None:
    marker = os.environ.get(FAULT_ENV)
    if marker and marker in path:
        os.kill(os.getpid(), getattr(signal, os.environ.get(FAULT_SIGNAL_ENV, "SIGSEGV")))
        time.sleep(60)


def _task_build_record(path: str, item: Any, racy_after_ns: int, options: dict[str, Any]) -> Any:
    from ckpt_index.sync.build import (
        SyncOptions,
        build_record_safely,
        checked_record,
        item_from_args,
    )

    _inject_fault(path)
    item = item_from_args(*item)
    record, reason = checked_record(
        path, item, *build_record_safely(path, item, racy_after_ns, SyncOptions(**options))
    )
    return record.columns, record.metrics, reason


def _task_infer(path: str, options: dict[str, Any]) -> Any:
    import dataclasses

    from ckpt_index.sources.merge import infer_metadata

    _inject_fault(path)
    return dataclasses.asdict(infer_metadata(path, **options))


def _task_read_checkpoint(path: str) -> Any:
    from ckpt_index.sources.checkpoint.reader import CheckpointReadError, read_checkpoint, to_plain
    from ckpt_index.sources.checkpoint.unpickler import ConversionLimit

    _inject_fault(path)
    try:
        contents = read_checkpoint(path)
    except CheckpointReadError as exc:
        return ("error", exc.reason)
    fields = {k: v for k, v in vars(contents).items() if k not in ("raw", "path")}
    fields.pop("state_dict_shapes", None)  # a cached_property lands in vars() once computed
    try:
        raw = to_plain(contents.raw)
    except ConversionLimit as exc:
        raw = {}
        fields["warnings"] = [*fields.get("warnings", []), f"contents: {exc}"]
    return ("ok", fields, raw, dict(contents.state_dict_shapes))


def _task_inspect_checkpoint(path: str) -> Any:
    """(why the file is unusable or None, the globals torch.load(weights_only=True) would refuse)."""
    from ckpt_index.sources.checkpoint.reader import (
        CheckpointReadError,
        check_integrity,
        read_checkpoint,
    )

    _inject_fault(path)
    broken = check_integrity(path)
    if broken is not None:
        return broken, None
    try:
        return None, list(read_checkpoint(path).unsafe_globals)
    except CheckpointReadError as exc:
        return exc.reason, None


def _task_sleep(seconds: float) -> Any:  # for the tests of the pool itself
    time.sleep(seconds)
    return seconds


def _task_allocate(megabytes: int) -> Any:  # for the tests of the pool itself
    return len(bytearray(megabytes << 20))


def _task_warn(message: str) -> Any:  # for the tests of the pool itself
    import logging

    logging.getLogger("ckpt_index.test").warning("%s", message)


def _task_crash(signal_number: int) -> Any:  # for the tests of the pool itself (0: no crash)
    if signal_number:
        os.kill(os.getpid(), signal_number)
        time.sleep(10)
    return signal_number


_TASKS: dict[str, Callable[..., Any]] = {
    "build_record": _task_build_record,
    "infer": _task_infer,
    "read_checkpoint": _task_read_checkpoint,
    "inspect_checkpoint": _task_inspect_checkpoint,
    "_sleep": _task_sleep,
    "_allocate": _task_allocate,
    "_crash": _task_crash,
    "_warn": _task_warn,
}


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


def _worker_main(memory_bytes: int) -> None:
    requests = os.fdopen(0, "rb", buffering=0)
    replies = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # a stray print from a library must not corrupt the replies
    # Everything a job needs is imported before the ceiling, so the budget is the file's alone.
    import ckpt_index.sources.checkpoint.reader  # noqa: F401
    import ckpt_index.sources.merge  # noqa: F401
    import ckpt_index.sync.build  # noqa: F401

    logs = _collect_logs()
    _apply_limits(memory_bytes)
    out = _Replies(replies)
    out.send(_frame(("ready", os.getpid())))
    out.flush()
    while True:
        message = _recv(requests, _PlainUnpickler)
        if message is None:
            return
        task, jobs = message
        func = _TASKS[task]
        for args in jobs:
            try:
                reply: tuple[Any, ...] = ("ok", func(*args))
            except MemoryError:
                out.exit_out_of_memory()
            except RecursionError:
                reply = ("error", "nested too deeply to parse")
            except Exception as exc:  # noqa: BLE001 - contained: this file's reason
                reply = ("error", _one_line(f"{exc.__class__.__name__}: {exc}"))
            if logs:
                reply = (*reply, logs[:_MAX_LOGS])
                logs.clear()
            try:
                data = _frame(reply)
            except MemoryError:
                out.exit_out_of_memory()
            except Exception as exc:  # noqa: BLE001 - a value that cannot be sent
                data = _frame(("error", _one_line(f"result cannot be returned: {exc}")))
            out.send(data)
        out.flush()  # the end of a chunk: the parent sends the next one as replies arrive


class _Replies:
    """A worker's replies, written a few at a time (a system call per job cost as much as the
    boundary checks): when 64 KiB or :data:`_FLUSH_SECONDS` of them have gathered, and at the end
    of each chunk. A worker that dies or hangs with some unsent is no problem: the parent runs
    each of its unanswered jobs again alone (:meth:`WorkerPool._run`) to find the culprit."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.frames, self.size, self.since = stream, [], 0, 0.0

    def send(self, data: bytes) -> None:
        if not self.frames:
            self.since = time.monotonic()
        self.frames.append(data)
        self.size += len(data)
        if self.size >= 1 << 16 or time.monotonic() - self.since >= _FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        data = memoryview(b"".join(self.frames))
        while data:
            data = data[self.stream.write(data) :]
        self.frames.clear()
        self.size = 0

    def exit_out_of_memory(self) -> NoReturn:
        # The replies before, then this job's: the parent charges the limit to the right job.
        self.frames.append(_frame(("memory", None)))
        self.flush()
        os._exit(_EXIT_MEMORY)  # state after a MemoryError is not worth trusting


#: Log records a job may send back (a file that makes a parser warn a million times is one file).
_MAX_LOGS = 20


def _collect_logs() -> list[tuple[str, int, str]]:
    """The package's warnings, kept to be re-logged by the parent (a worker has no one to tell)."""
    import logging

    records: list[tuple[str, int, str]] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if len(records) < _MAX_LOGS:
                records.append((record.name, record.levelno, _one_line(record.getMessage(), 1000)))

    logger = logging.getLogger("ckpt_index")
    logger.addHandler(Collect(logging.WARNING))
    logger.propagate = False
    return records


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# The wire: length-prefixed pickles of plain data


def _frame(obj: Any) -> bytes:
    data = pickle.dumps(obj, protocol=5)
    return _HEADER.pack(len(data)) + data


def _recv(stream: io.RawIOBase, unpickler: type[pickle.Unpickler]) -> Any:
    header = _read_exact(stream, _HEADER.size)
    if header is None:
        return None
    (size,) = _HEADER.unpack(header)
    data = _read_exact(stream, size)
    if data is None:
        return None
    return unpickler(io.BytesIO(data)).load()


def _read_exact(stream: io.RawIOBase, size: int) -> bytes | None:
    chunks, remaining = [], size
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            return None
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


class _PlainUnpickler(pickle.Unpickler):
    """Loads plain data only: containers and atoms, no class but a few pure-data builtins."""

    _ALLOWED = {
        ("builtins", "complex"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "bytearray"),
        ("builtins", "slice"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing {module}.{name} in a worker reply")


# ---------------------------------------------------------------------------------------------
# Parent side


class _Worker:
    def __init__(self, limits: Limits) -> None:
        import ckpt_index

        package_root = os.path.dirname(os.path.dirname(os.path.abspath(ckpt_index.__file__)))
        env = dict(os.environ)
        # The worker must import this very ckpt_index, whatever sys.path the caller built.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ckpt_index.isolation.pool", str(limits.memory_bytes)],
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
        """Wait until the worker says its imports are done and its limits set."""
        if self.ready:
            return
        deadline = time.monotonic() + _START_SECONDS
        ready: list[Any] = []
        while not ready:
            left = deadline - time.monotonic()
            readable = left > 0 and select.select([self.fd], [], [], left)[0]
            got = self.replies() if readable else None
            if got is None:
                self.kill()
                raise WorkerStartError(
                    f"a parsing worker ({sys.executable} -m ckpt_index.isolation.pool) did not start "
                    f"(exit status {self.proc.returncode}); run it by hand to see why"
                )
            ready.extend(got)
        self.ready = True

    def send(self, task: str, jobs: list[tuple[int, tuple[Any, ...]]], seconds: float) -> None:
        if not self.pending:  # else the job it is on keeps its deadline
            self.deadline = time.monotonic() + seconds
        self.pending.extend(index for index, _ in jobs)
        assert self.proc.stdin is not None
        data = memoryview(_frame((task, [args for _, args in jobs])))
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
            while len(view) - start >= _HEADER.size:
                (size,) = _HEADER.unpack_from(view, start)
                if size > _MAX_REPLY_BYTES:
                    raise _BadReply(f"worker reply of {size} bytes")
                end = start + _HEADER.size + size
                if len(view) < end:
                    break
                try:
                    out.append(_PlainUnpickler(io.BytesIO(view[start + _HEADER.size : end])).load())
                except Exception as exc:  # noqa: BLE001
                    raise _BadReply(f"unreadable worker reply: {exc}") from None
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


class _BadReply(Exception):
    pass


class WorkerStartError(RuntimeError):
    """A worker process could not start: the environment is broken, not a file."""


def _death_reason(status: int, limits: Limits) -> str:
    if status == _EXIT_MEMORY:
        return f"over the {limits.memory_text()} memory limit"
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        if name == "SIGKILL":  # the kernel's OOM killer, or someone's kill -9
            return "reader killed (SIGKILL)"
        return f"reader crashed: {name}"
    return f"reader exited with status {status}"


class WorkerPool:
    """Worker processes that run named tasks on untrusted files, each job under :class:`Limits`.

    Args:
        workers: how many processes (default: the CPU count, at most 8).
        limits: memory and time per job (default: :meth:`Limits.from_env`).
        chunk: jobs sent to a worker at once (replies still come one by one, so a crash or a
            time-out is charged to the exact job that caused it).
    """

    def __init__(
        self, workers: int | None = None, limits: Limits | None = None, *, chunk: int = 16
    ) -> None:
        if workers is not None and workers < 1:
            raise ValueError(f"WorkerPool(workers={workers!r}): need at least one worker")
        self.size = workers or min(os.cpu_count() or 1, 8)
        self.limits = limits or Limits.from_env()
        self.chunk = chunk
        self._idle: list[_Worker] = []
        self.crashes = 0

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for worker in self._idle:
            worker.close()
        self._idle.clear()

    def _workers(self, count: int) -> list[_Worker]:
        """``count`` ready workers: idle ones first, the rest started side by side."""
        workers = [self._idle.pop() for _ in range(min(count, len(self._idle)))]
        fresh = [_Worker(self.limits) for _ in range(count - len(workers))]
        try:
            for worker in fresh:
                worker.wait_ready()
        except BaseException:
            for worker in fresh:
                worker.kill()
            raise
        return workers + fresh

    def map(self, task: str, jobs: Iterable[tuple[Any, ...]]) -> Iterator[Outcome]:
        """One :class:`Outcome` per job, in the order of ``jobs``.

        A dispatcher thread keeps the workers busy and collects their replies while the caller
        works on earlier outcomes (a sync writes a batch to the database meanwhile); it runs at
        most :attr:`ahead` outcomes ahead of the caller.
        """
        if task not in _TASKS:
            raise ValueError(f"unknown task {task!r}")
        import threading

        state = _MapState(list(jobs))
        dispatcher = threading.Thread(
            target=self._dispatch, args=(task, state), name="ckpt-index-workers", daemon=True
        )
        dispatcher.start()
        relogged: set[tuple[str, str]] = set()
        try:
            index = 0
            while index < len(state.jobs):
                with state.changed:  # take every outcome that is ready, in one hand-over
                    while index not in state.done and state.error is None:
                        state.changed.wait()
                    if index not in state.done:
                        raise state.error  # type: ignore[misc]
                    ready = []
                    while index in state.done:
                        ready.append(state.done.pop(index))
                        index += 1
                    state.consumed = index
                for outcome in ready:
                    _relog(outcome.logs, relogged)
                    yield outcome
        finally:
            with state.changed:
                state.stop = True
                state.changed.notify_all()
            dispatcher.join()

    #: Outcomes the dispatcher may hold that the caller has not taken yet (bounds memory).
    ahead = 4096

    def _dispatch(self, task: str, state: _MapState) -> None:
        try:
            self._run(task, state)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            with state.changed:
                state.error = exc
                state.changed.notify_all()

    def _run(self, task: str, state: _MapState) -> None:
        jobs = state.jobs
        todo: deque[int] = deque(range(len(jobs)))
        running: dict[int, _Worker] = {}
        selector = selectors.DefaultSelector()
        seconds = self.limits.seconds
        finished = 0

        def publish(*outcomes: tuple[int, Outcome]) -> None:
            nonlocal finished
            with state.changed:
                state.done.update(outcomes)
                state.changed.notify()
            finished += len(outcomes)

        #: Jobs that were unanswered when a worker with several of them failed: each runs again
        #: alone, so that a failure is charged to the job that causes it, never to a neighbour.
        suspects: deque[int] = deque()

        def feed(worker: _Worker) -> None:
            if suspects:
                worker.send(task, [(suspects[0], jobs[suspects.popleft()])], seconds)
                worker.alone = True
            else:
                batch = [todo.popleft() for _ in range(min(self.chunk, len(todo)))]
                worker.send(task, [(i, jobs[i]) for i in batch], seconds)
                worker.alone = False

        def start(worker: _Worker) -> None:
            feed(worker)
            running[worker.fd] = worker
            selector.register(worker.fd, selectors.EVENT_READ)

        def retire(worker: _Worker, reason: str | None, *, exact: bool = False) -> None:
            """Stop a worker that failed. ``reason`` is charged to its current job when that is
            certain (``exact``, or it had one job); otherwise its unanswered jobs run again alone."""
            selector.unregister(worker.fd)
            del running[worker.fd]
            worker.kill()
            self.crashes += 1
            if reason is not None and worker.pending and (exact or len(worker.pending) == 1):
                publish((worker.pending.popleft(), Outcome(False, reason=reason, contained=True)))
                todo.extendleft(reversed(worker.pending))
            elif reason is not None:
                suspects.extend(worker.pending)
            else:
                todo.extendleft(reversed(worker.pending))
            worker.pending.clear()

        try:
            while finished < len(jobs) and not state.stop:
                in_flight = sum(len(w.pending) for w in running.values())
                if suspects:
                    for worker in self._workers(min(self.size - len(running), len(suspects))):
                        start(worker)
                elif todo and finished - state.consumed + in_flight < self.ahead:
                    wanted = min(self.size - len(running), -(-len(todo) // self.chunk))
                    for worker in self._workers(wanted) if wanted > 0 else ():
                        start(worker)
                    # A worker on its last chunk gets the next one now: it never waits for us.
                    for worker in list(running.values()):
                        if todo and not worker.alone and len(worker.pending) <= self.chunk:
                            feed(worker)
                now = time.monotonic()
                # Wake at the next deadline, and now and then to see the caller catch up or stop.
                timeout = min([w.deadline - now for w in running.values()] + [0.05])
                for key, _ in selector.select(max(0.0, timeout)):
                    worker = running[key.fd]
                    try:
                        replies = worker.replies()
                    except _BadReply as exc:  # the next unanswered job's reply: certain
                        retire(worker, _one_line(str(exc)), exact=True)
                        continue
                    if replies is None:  # it died; the exit status says how
                        retire(worker, _death_reason(worker.proc.wait(), self.limits))
                        continue
                    answered, memory = [], False
                    for reply in replies:
                        answered.append((worker.pending.popleft(), _outcome(reply, self.limits)))
                        if reply[0] == "memory":  # it exits now; its other jobs go elsewhere
                            memory = True
                            break
                    if answered:
                        publish(*answered)
                        worker.deadline = time.monotonic() + seconds
                    if memory:
                        retire(worker, None)
                    elif not worker.pending:
                        selector.unregister(worker.fd)
                        del running[worker.fd]
                        self._idle.append(worker)
                now = time.monotonic()
                for worker in [w for w in running.values() if w.deadline <= now]:
                    retire(worker, f"over the {seconds:g} s time limit")
        finally:
            for worker in running.values():
                worker.kill()
            selector.close()


class _MapState:
    """What the dispatcher thread and the caller of :meth:`WorkerPool.map` share."""

    def __init__(self, jobs: list[tuple[Any, ...]]) -> None:
        import threading

        self.jobs = jobs
        self.changed = threading.Condition()
        self.done: dict[int, Outcome] = {}
        self.consumed = 0
        self.stop = False
        self.error: BaseException | None = None


def _outcome(reply: Any, limits: Limits) -> Outcome:
    kind = reply[0]
    logs = tuple(reply[2]) if len(reply) > 2 else ()
    if kind == "ok":
        return Outcome(True, value=reply[1], logs=logs)
    if kind == "memory":
        return Outcome(
            False, reason=f"over the {limits.memory_text()} memory limit", contained=True
        )
    return Outcome(False, reason=str(reply[1]), logs=logs)


def _relog(logs: Sequence[tuple[str, int, str]], seen: set[tuple[str, str]]) -> None:
    """Log here what a worker logged, each message once per map (workers do not share state)."""
    import logging

    for name, level, message in logs:
        if (name, message) not in seen and isinstance(name, str) and name.startswith("ckpt_index"):
            seen.add((name, message))
            logging.getLogger(name).log(level, "%s", message)


def run_isolated(task: str, args: Sequence[Any], limits: Limits | None = None) -> Outcome:
    """One job in a fresh worker (the Python API's protected calls)."""
    with WorkerPool(1, limits) as pool:
        return next(pool.map(task, [tuple(args)]))


if __name__ == "__main__":
    _worker_main(int(sys.argv[1]))
