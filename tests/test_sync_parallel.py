"""Parsing in worker processes gives the rows a serial sync gives; a worker's crash costs one
file."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from helpers.files import age
from sqlalchemy import select

from ckpt_index.index.engine import open_engine
from ckpt_index.index.tables import checkpoint_metrics, checkpoints
from ckpt_index.isolation import worker as isolation
from ckpt_index.sync import roots as sync_module
from ckpt_index.tools.demo import make_tree

VOLATILE = {"id", "indexed_at", "ckpt_mtime_ns", "sidecar_mtime_ns"}


def snapshot(db: Path) -> tuple[list[dict], list[tuple]]:
    engine = open_engine(db, readonly=True)
    with engine.connect() as conn:
        rows = [
            {k: v for k, v in r._mapping.items() if k not in VOLATILE}
            for r in conn.execute(select(checkpoints).order_by(checkpoints.c.checkpoint_path))
        ]
        metrics = conn.execute(
            select(
                checkpoints.c.checkpoint_path, checkpoint_metrics.c.name, checkpoint_metrics.c.value
            )
            .join(checkpoints, checkpoints.c.id == checkpoint_metrics.c.checkpoint_id)
            .order_by(checkpoints.c.checkpoint_path, checkpoint_metrics.c.name)
        ).all()
    engine.dispose()
    return rows, [tuple(m) for m in metrics]


def run(root: Path, db: Path) -> sync_module.SyncSummary:
    engine = open_engine(db)
    try:
        return sync_module.sync_roots(engine, [root])
    finally:
        engine.dispose()


@pytest.fixture
def tree(outputs: Path) -> Path:
    # Sidecars, an invalid one and a sidecar-less (inferred) checkpoint among 300.
    make_tree(outputs, 300, per_experiment=30, without_sidecar=2, invalid=2)
    age(outputs)  # out of the racy window, so an unchanged file is not read again
    return outputs


class Spy:
    """Counts the rows built in this process (workers are other processes)."""

    def __init__(self, monkeypatch) -> None:
        self.calls = 0
        real = sync_module.build_record_safely

        def counting(*args, **kwargs):
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(sync_module, "build_record_safely", counting)


def test_parallel_and_serial_syncs_agree(tree: Path, tmp_path: Path, monkeypatch) -> None:
    # Serial: sidecars here, the two sidecar-less checkpoints in a worker.
    monkeypatch.setattr(sync_module, "PARALLEL_MIN", 10**9)
    spy = Spy(monkeypatch)
    serial = run(tree, tmp_path / "serial.db")
    assert spy.calls == 0, "with a checkpoint to read, every file goes to the workers"
    monkeypatch.setattr(sync_module, "PARALLEL_MIN", 16)
    parallel = run(tree, tmp_path / "parallel.db")
    assert spy.calls == 0
    assert (
        (parallel.valid, parallel.invalid, parallel.inferred)
        == (serial.valid, serial.invalid, serial.inferred)
        == (296, 2, 2)
    )
    assert snapshot(tmp_path / "parallel.db") == snapshot(tmp_path / "serial.db")


def test_a_small_sync_of_sidecars_alone_stays_in_process(
    outputs: Path, tmp_path: Path, monkeypatch
) -> None:
    make_tree(outputs, 20, per_experiment=10, without_sidecar=0, invalid=1)
    spy = Spy(monkeypatch)
    summary = run(outputs, tmp_path / "small.db")
    assert spy.calls == 20 and (summary.valid, summary.invalid) == (19, 1)


def test_other_threads_do_not_matter(tree: Path, tmp_path: Path, monkeypatch) -> None:
    # Workers are fresh interpreters, never forks: a thread holding a lock cannot hang them.
    monkeypatch.setattr(sync_module, "PARALLEL_MIN", 16)
    lock = threading.Lock()
    stop = threading.Event()

    def hold() -> None:
        with lock:
            stop.wait()

    other = threading.Thread(target=hold)
    other.start()
    try:
        summary = run(tree, tmp_path / "threads.db")
    finally:
        stop.set()
        other.join()
    assert (summary.valid, summary.inferred) == (296, 2)


@pytest.mark.parametrize("fault", ["SIGSEGV", "SIGKILL"])
def test_a_crashing_reader_costs_its_file_only(
    tree: Path, tmp_path: Path, monkeypatch, fault: str
) -> None:
    monkeypatch.setattr(sync_module, "PARALLEL_MIN", 16)
    victim = sorted(tree.rglob("*.ckpt"))[137]
    monkeypatch.setenv(isolation.FAULT_ENV, str(victim))
    monkeypatch.setenv(isolation.FAULT_SIGNAL_ENV, fault)
    summary = run(tree, tmp_path / "crash.db")
    reasons = dict(summary.unreadable_files)
    expected = "reader crashed: SIGSEGV" if fault == "SIGSEGV" else "reader killed (SIGKILL)"
    assert reasons[str(victim)] == expected
    assert summary.unreadable >= 1 and summary.valid + summary.inferred == 297
    rows = {r["checkpoint_path"]: r for r in snapshot(tmp_path / "crash.db")[0]}
    assert len(rows) == 300 and rows[str(victim)]["status"] == "unreadable"
    # Unchanged, it is not read again (a crash is not retried on every sync).
    again = run(tree, tmp_path / "crash.db")
    assert again.unchanged == 300 and again.parsed == 0
