"""The worker pool that runs untrusted parsing: a crash, a hang or a memory bomb costs one job."""

from __future__ import annotations

import os
import signal
import time

import pytest

from ckpt_index.isolation import pool as isolation
from ckpt_index.isolation import testing, worker
from ckpt_index.isolation.pool import Limits, WorkerPool, run_isolated
from ckpt_index.isolation.protocol import PlainUnpickler

LIMITS = Limits(memory_bytes=128 << 20, seconds=3)
# The pool's own test tasks (ckpt_index.isolation.testing), named as any task is.
SLEEP = "ckpt_index.isolation.testing:sleep"
ALLOCATE = "ckpt_index.isolation.testing:allocate"
CRASH = "ckpt_index.isolation.testing:crash"
WARN = "ckpt_index.isolation.testing:warn"


def outcomes(
    task: str, args: list[tuple], workers: int = 2, limits: Limits = LIMITS, chunk: int = 4
):
    with WorkerPool(workers, limits, chunk=chunk) as pool:
        return list(pool.map(task, args)), pool.crashes


def test_results_come_back_in_order_across_workers() -> None:
    delays = [(0.02 * (i % 3),) for i in range(20)]
    results, crashes = outcomes(SLEEP, delays)
    assert [r.value for r in results] == [d[0] for d in delays]
    assert all(r.ok for r in results) and crashes == 0


@pytest.mark.parametrize("name", ["SIGSEGV", "SIGABRT", "SIGBUS", "SIGKILL"])
def test_a_crash_is_charged_to_the_job_that_caused_it(name: str) -> None:
    number = int(getattr(signal, name))
    with WorkerPool(1, LIMITS, chunk=8) as pool:
        before = list(pool.map(SLEEP, [(0.0,)] * 3))
        crashed = list(pool.map(CRASH, [(number,)]))
        after = list(pool.map(SLEEP, [(0.01,)] * 3))
    assert all(r.ok for r in before + after)
    (outcome,) = crashed
    assert not outcome.ok and outcome.contained
    expected = "reader killed (SIGKILL)" if name == "SIGKILL" else f"reader crashed: {name}"
    assert outcome.reason == expected


def test_jobs_queued_behind_a_crash_are_run_by_a_fresh_worker() -> None:
    # One worker, one chunk: the failure is in the middle of what was sent to it.
    with WorkerPool(1, LIMITS, chunk=16) as pool:
        mixed = list(pool.map(ALLOCATE, [(1,), (1,), (4096,), (1,), (2,)]))
    assert [r.ok for r in mixed] == [True, True, False, True, True]
    assert mixed[2].reason == "over the 128 MiB memory limit" and mixed[2].contained
    assert [r.value for r in mixed if r.ok] == [1 << 20, 1 << 20, 1 << 20, 2 << 20]


def test_a_job_over_its_time_budget_is_killed_and_the_rest_go_on() -> None:
    started = time.monotonic()
    results, crashes = outcomes(
        SLEEP,
        [(0.0,), (30.0,), (0.0,), (0.0,)],
        workers=1,
        limits=Limits(memory_bytes=128 << 20, seconds=1),
    )
    assert time.monotonic() - started < 15
    assert [r.ok for r in results] == [True, False, True, True]
    # Its neighbours' replies may still have been in the worker: they all ran again alone, and
    # the hang a second time (so two workers were stopped), to charge it to the right job.
    assert results[1].reason == "over the 1 s time limit" and crashes == 2


def test_the_callers_time_between_results_is_not_charged_to_the_workers() -> None:
    # A caller that writes a database batch between results must not make workers time out.
    with WorkerPool(2, Limits(memory_bytes=128 << 20, seconds=1), chunk=2) as pool:
        seen = []
        for outcome in pool.map(SLEEP, [(0.05,)] * 8):
            seen.append(outcome.ok)
            time.sleep(1.2)
    assert seen == [True] * 8


def test_memory_ceiling_is_relative_to_what_the_worker_started_with() -> None:
    results, _ = outcomes(ALLOCATE, [(64,), (400,)], workers=1)
    assert results[0].ok and results[0].value == 64 << 20
    assert not results[1].ok and "memory limit" in results[1].reason


def test_a_task_error_is_a_reason_not_a_dead_worker() -> None:
    results, crashes = outcomes(ALLOCATE, [("not a number",), (1,)], workers=1)
    assert not results[0].ok and not results[0].contained
    assert results[0].reason.startswith("TypeError:") and results[1].ok and crashes == 0


def test_replies_holding_code_are_refused() -> None:
    import io
    import pickle

    payload = pickle.dumps(os.system)  # a global that is not plain data
    with pytest.raises(pickle.UnpicklingError, match="refusing posix.system|refusing os.system"):
        PlainUnpickler(io.BytesIO(payload)).load()
    plain = {"a": (1, 2.5, None, "x", b"y", {3}, frozenset({4}), complex(1, 2), [True])}
    assert PlainUnpickler(io.BytesIO(pickle.dumps(plain, protocol=5))).load() == plain


def test_limits_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv(isolation.MEMORY_ENV, "300")
    monkeypatch.setenv(isolation.SECONDS_ENV, "2.5")
    assert Limits.from_env() == Limits(memory_bytes=300 << 20, seconds=2.5)
    monkeypatch.setenv(isolation.SECONDS_ENV, "soon")
    with pytest.raises(ValueError, match=isolation.SECONDS_ENV):
        Limits.from_env()


def test_run_isolated_and_unknown_tasks() -> None:
    assert run_isolated(SLEEP, [0.0]).value == 0.0
    assert run_isolated(testing.sleep, [0.0]).value == 0.0  # a function goes by its name
    for name in ("os.system", "os:system", "ckpt_index.isolation.testing", "_sleep"):
        with pytest.raises(ValueError, match="unknown task"):
            run_isolated(name, ["true"])
    # Well formed but not there: the worker refuses it before it is ready.
    for name in ("ckpt_index.isolation.testing:nope", "ckpt_index.nowhere:sleep"):
        with pytest.raises(ValueError, match="unknown task"):
            run_isolated(name, [0.0])


def test_a_worker_imports_its_tasks_modules_before_its_ceiling_and_no_database_code() -> None:
    from ckpt_index.sync.build import WORKER_IMPORTS, SyncOptions, build_record_task

    names = ("ckpt_index.sync.build", *WORKER_IMPORTS, "sqlalchemy", "torch")
    job = ("/nowhere/a.ckpt", (None, None, None), 0, SyncOptions(infer=False).for_worker())
    with WorkerPool(1, LIMITS) as pool:
        (built,) = pool.map(build_record_task, [job])
        # The same worker, parked idle, runs the next map: it shows what it had imported.
        (loaded,) = pool.map("ckpt_index.isolation.testing:loaded", [(names,)])
    assert built.ok and built.value[0]["status"] == "missing"
    assert loaded.value == ["ckpt_index.sync.build", *WORKER_IMPORTS]


def test_a_worker_that_cannot_start_is_an_error_of_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("PYTHONPATH", "")
    monkeypatch.setattr("sys.executable", "/bin/false")
    with pytest.raises(isolation.WorkerStartError, match="did not start"):
        run_isolated(SLEEP, [0.0])


def test_warnings_logged_in_a_worker_reach_the_parent_once(caplog) -> None:
    with caplog.at_level("WARNING", logger="ckpt_index"):
        results, _ = outcomes(WARN, [("W&B look-ups skipped",)] * 6, workers=2, chunk=1)
    assert all(r.ok for r in results)
    messages = [r.getMessage() for r in caplog.records if r.name == "ckpt_index.test"]
    assert messages == ["W&B look-ups skipped"]


def test_the_public_read_checkpoint_is_isolated(tmp_path, monkeypatch) -> None:
    import ckpt_index
    from ckpt_index.sources.checkpoint.reader import CheckpointReadError
    from ckpt_index.tools.demo import make_tree

    (path,) = make_tree(tmp_path, 1)
    contents = ckpt_index.read_checkpoint(path)
    assert contents.epoch == ckpt_index.read_checkpoint(path, isolated=False).epoch
    assert contents.unsafe_globals == [] and isinstance(contents.raw["hyper_parameters"], dict)
    monkeypatch.setenv(worker.FAULT_ENV, str(path))
    with pytest.raises(CheckpointReadError, match="reader crashed: SIGSEGV"):
        ckpt_index.read_checkpoint(path)


def test_a_crash_among_batched_replies_is_charged_to_its_job_only() -> None:
    # Replies are sent a few at a time: a worker may die with several jobs unanswered. Each of
    # those runs again alone, so the crash is charged to the job that causes it.
    with WorkerPool(1, LIMITS, chunk=16) as pool:
        results = list(pool.map(CRASH, [(0,), (0,), (int(signal.SIGSEGV),), (0,), (0,)]))
    assert [r.ok for r in results] == [True, True, False, True, True]
    assert results[2].reason == "reader crashed: SIGSEGV"


def test_a_hang_among_batched_replies_is_charged_to_its_job_only() -> None:
    limits = Limits(memory_bytes=128 << 20, seconds=1)
    with WorkerPool(1, limits, chunk=16) as pool:
        results = list(pool.map(SLEEP, [(0.0,), (0.0,), (30.0,), (0.0,)]))
    assert [r.ok for r in results] == [True, True, False, True]
    assert results[2].reason == "over the 1 s time limit"
