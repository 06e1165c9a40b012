"""Untrusted parsing in worker processes, under a memory ceiling and a time budget per file.

Checkpoint pickles, W&B logs and Hydra or W&B configs come from files anyone could have written.
The parsers bound their own work, but a bug in them, in libyaml, or in CPython's C code (hashing
a tuple nested a million deep recurses until the stack overflows) must cost one file, not the
sync. So each file is parsed by a worker process (:mod:`ckpt_index.isolation.worker`):

- a fresh interpreter (``python -m ckpt_index.isolation.worker``), never a fork: a fork of a
  process with other threads (a notebook, the training callback's writer) can inherit a held lock;
- its address space capped (``RLIMIT_AS``: what it had at start plus :attr:`Limits.memory_bytes`)
  and core dumps off;
- watched by the parent with a wall-clock budget per file (:attr:`Limits.seconds`).

A worker that crashes, is killed or exceeds a limit yields a one-line reason for the file it was
reading (``reader crashed: SIGSEGV``, ``over the 512 MiB memory limit``, ``over the 10 s time
limit``) and a fresh worker takes the rest. Nothing is retried in-process.

A task is a function of the package named ``"module:function"`` (or passed as the function
itself: only its name crosses to the worker). Arguments and results are plain data
(:mod:`ckpt_index.isolation.protocol`), so a worker cannot hand the parent anything that runs code.

Example::

    with WorkerPool(workers=2) as pool:
        for outcome in pool.map("ckpt_index.isolation.testing:sleep", [(0.1,), (0.2,)]):
            print(outcome.value if outcome.ok else outcome.reason)
"""

from __future__ import annotations

import os
import selectors
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ckpt_index.isolation.process import BadReply, WorkerProcess, WorkerStartError, death_reason
from ckpt_index.isolation.protocol import Task, one_line, task_name

__all__ = ["Limits", "Outcome", "WorkerPool", "WorkerStartError", "run_isolated"]

#: Environment overrides of the default limits (in MiB and seconds).
MEMORY_ENV = "CKPT_INDEX_WORKER_MEMORY_MB"
SECONDS_ENV = "CKPT_INDEX_WORKER_SECONDS"
DEFAULT_MEMORY_MB = 512
DEFAULT_SECONDS = 30.0


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


class WorkerPool:
    """Worker processes that run tasks on untrusted files, each job under :class:`Limits`.

    Args:
        workers: how many processes (default: the CPU count, at most 8).
        limits: memory and time per job (default: :meth:`Limits.from_env`).
        chunk: jobs sent to a worker at once (replies still come one by one, so a crash or a
            time-out is charged to the exact job that caused it).
    """

    #: Outcomes the dispatcher may hold that the caller has not taken yet (bounds memory).
    ahead = 4096

    def __init__(
        self, workers: int | None = None, limits: Limits | None = None, *, chunk: int = 16
    ) -> None:
        if workers is not None and workers < 1:
            raise ValueError(f"WorkerPool(workers={workers!r}): need at least one worker")
        self.size = workers or min(os.cpu_count() or 1, 8)
        self.limits = limits or Limits.from_env()
        self.chunk = chunk
        self._idle: list[WorkerProcess] = []
        self.crashes = 0

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for worker in self._idle:
            worker.close()
        self._idle.clear()

    def _workers(self, task: str, count: int) -> list[WorkerProcess]:
        """``count`` ready workers: idle ones first, the rest started side by side."""
        workers = [self._idle.pop() for _ in range(min(count, len(self._idle)))]
        fresh = [WorkerProcess(self.limits.memory_bytes, task) for _ in range(count - len(workers))]
        try:
            for worker in fresh:
                worker.wait_ready()
        except BaseException:
            for worker in fresh:
                worker.kill()
            raise
        return workers + fresh

    def map(self, task: Task, jobs: Iterable[tuple[Any, ...]]) -> Iterator[Outcome]:
        """One :class:`Outcome` per job (the arguments of one call of ``task``), in order.

        A dispatcher thread keeps the workers busy and collects their replies while the caller
        works on earlier outcomes (a sync writes a batch to the database meanwhile); it runs at
        most :attr:`ahead` outcomes ahead of the caller.
        """
        name = task_name(task)
        state = _MapState(list(jobs))
        dispatcher = threading.Thread(
            target=self._dispatch, args=(name, state), name="ckpt-index-workers", daemon=True
        )
        dispatcher.start()
        relogged: set[tuple[str, str]] = set()
        try:
            index = 0
            while index < len(state.jobs):
                for outcome in state.take(index):
                    index += 1
                    _relog(outcome.logs, relogged)
                    yield outcome
        finally:
            with state.changed:
                state.stop = True
                state.changed.notify_all()
            dispatcher.join()

    def _dispatch(self, task: str, state: _MapState) -> None:
        try:
            _Dispatch(self, task, state).run()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            with state.changed:
                state.error = exc
                state.changed.notify_all()


class _MapState:
    """What the dispatcher thread and the caller of :meth:`WorkerPool.map` share."""

    def __init__(self, jobs: list[tuple[Any, ...]]) -> None:
        self.jobs = jobs
        self.changed = threading.Condition()
        self.done: dict[int, Outcome] = {}
        #: Outcomes the caller has taken.
        self.consumed = 0
        self.stop = False
        self.error: BaseException | None = None

    def take(self, index: int) -> list[Outcome]:
        """Every outcome ready from ``index`` on, in one hand-over (waits for the first)."""
        with self.changed:
            while index not in self.done and self.error is None:
                self.changed.wait()
            if index not in self.done:
                assert self.error is not None
                raise self.error
            ready = []
            while index in self.done:
                ready.append(self.done.pop(index))
                index += 1
            self.consumed = index
        return ready

    def publish(self, outcomes: Sequence[tuple[int, Outcome]]) -> None:
        with self.changed:
            self.done.update(outcomes)
            self.changed.notify()


class _Dispatch:
    """One map's jobs through the pool's workers, run by the dispatcher thread.

    Each worker gets a chunk of jobs, and the next one while it works on its last. A failure
    (crash, limit, unreadable reply) is charged to the job that caused it: to the worker's current
    job when that is certain; otherwise each of its unanswered jobs runs again alone (a suspect),
    so that a failure is never charged to a neighbour.
    """

    def __init__(self, pool: WorkerPool, task: str, state: _MapState) -> None:
        self.pool, self.task, self.state = pool, task, state
        self.jobs = state.jobs
        self.seconds = pool.limits.seconds
        self.todo: deque[int] = deque(range(len(self.jobs)))
        self.suspects: deque[int] = deque()
        self.running: dict[int, WorkerProcess] = {}
        self.selector = selectors.DefaultSelector()
        self.finished = 0

    def run(self) -> None:
        try:
            while self.finished < len(self.jobs) and not self.state.stop:
                self.top_up()
                now = time.monotonic()
                # Wake at the next deadline, and now and then to see the caller catch up or stop.
                timeout = min([w.deadline - now for w in self.running.values()] + [0.05])
                for key, _ in self.selector.select(max(0.0, timeout)):
                    self.collect(self.running[key.fd])
                now = time.monotonic()
                for worker in [w for w in self.running.values() if w.deadline <= now]:
                    self.retire(worker, f"over the {self.seconds:g} s time limit")
        finally:
            for worker in self.running.values():
                worker.kill()
            self.selector.close()

    def top_up(self) -> None:
        """Start workers for the jobs waiting, within the pool's size and its lead on the caller."""
        pool, running = self.pool, self.running
        if self.suspects:
            for worker in pool._workers(
                self.task, min(pool.size - len(running), len(self.suspects))
            ):
                self.start(worker)
            return
        in_flight = sum(len(w.pending) for w in running.values())
        if not self.todo or self.finished - self.state.consumed + in_flight >= pool.ahead:
            return
        wanted = min(pool.size - len(running), -(-len(self.todo) // pool.chunk))
        for worker in pool._workers(self.task, wanted) if wanted > 0 else ():
            self.start(worker)
        # A worker on its last chunk gets the next one now: it never waits for us.
        for worker in list(running.values()):
            if self.todo and not worker.alone and len(worker.pending) <= pool.chunk:
                self.feed(worker)

    def start(self, worker: WorkerProcess) -> None:
        self.feed(worker)
        self.running[worker.fd] = worker
        self.selector.register(worker.fd, selectors.EVENT_READ)

    def feed(self, worker: WorkerProcess) -> None:
        if self.suspects:
            index = self.suspects.popleft()
            worker.send(self.task, [(index, self.jobs[index])], self.seconds)
            worker.alone = True
        else:
            batch = [self.todo.popleft() for _ in range(min(self.pool.chunk, len(self.todo)))]
            worker.send(self.task, [(i, self.jobs[i]) for i in batch], self.seconds)
            worker.alone = False

    def collect(self, worker: WorkerProcess) -> None:
        """Take what ``worker`` replied; retire it if it failed, park it if it is done."""
        limits = self.pool.limits
        try:
            replies = worker.replies()
        except BadReply as exc:  # the next unanswered job's reply: certain
            self.retire(worker, one_line(str(exc)), exact=True)
            return
        if replies is None:  # it died; the exit status says how
            self.retire(worker, death_reason(worker.proc.wait(), limits.memory_text()))
            return
        answered, memory = [], False
        for reply in replies:
            answered.append((worker.pending.popleft(), _outcome(reply, limits)))
            if reply[0] == "memory":  # it exits now; its other jobs go elsewhere
                memory = True
                break
        if answered:
            self.publish(answered)
            worker.deadline = time.monotonic() + self.seconds
        if memory:
            self.retire(worker, None)
        elif not worker.pending:
            self.selector.unregister(worker.fd)
            del self.running[worker.fd]
            self.pool._idle.append(worker)

    def retire(self, worker: WorkerProcess, reason: str | None, *, exact: bool = False) -> None:
        """Stop a worker that failed. ``reason`` is charged to its current job when that is
        certain (``exact``, or it had one job); otherwise its unanswered jobs run again alone."""
        self.selector.unregister(worker.fd)
        del self.running[worker.fd]
        worker.kill()
        self.pool.crashes += 1
        pending = worker.pending
        if reason is not None and pending and (exact or len(pending) == 1):
            self.publish([(pending.popleft(), Outcome(False, reason=reason, contained=True))])
            self.todo.extendleft(reversed(pending))
        elif reason is not None:
            self.suspects.extend(pending)
        else:
            self.todo.extendleft(reversed(pending))
        pending.clear()

    def publish(self, outcomes: list[tuple[int, Outcome]]) -> None:
        self.state.publish(outcomes)
        self.finished += len(outcomes)


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


def run_isolated(task: Task, args: Sequence[Any], limits: Limits | None = None) -> Outcome:
    """One job in a fresh worker (the Python API's protected calls)."""
    with WorkerPool(1, limits) as pool:
        return next(pool.map(task, [tuple(args)]))
