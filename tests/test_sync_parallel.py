"""The process pool that parses sidecars of a large cold sync gives the rows a serial sync gives."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from sqlalchemy import select

from ckpt_index import sync as sync_module
from ckpt_index.db import open_engine
from ckpt_index.demo import make_tree
from ckpt_index.tables import checkpoint_metrics, checkpoints

VOLATILE = {"id", "indexed_at", "ckpt_mtime_ns", "sidecar_mtime_ns"}


def snapshot(db: Path) -> tuple[list[dict], list[tuple]]:
    engine = open_engine(db, readonly=True)
    with engine.connect() as conn:
        rows = [
            {k: v for k, v in r._mapping.items() if k not in VOLATILE}
            for r in conn.execute(select(checkpoints).order_by(checkpoints.c.checkpoint_path))
        ]
        metrics = conn.execute(
            select(checkpoints.c.checkpoint_path, checkpoint_metrics.c.name, checkpoint_metrics.c.value)
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
    return outputs


# Module-level, so that the pool can pickle them by reference.
_REAL_BUILD_CHUNK = sync_module._build_chunk
_PARENT = os.getpid()
_PARENT_CALLS: list[int] = []


def _counting_chunk(*args):
    if os.getpid() == _PARENT:
        _PARENT_CALLS.append(1)
    return _REAL_BUILD_CHUNK(*args)


def _dying_chunk(*args):
    if os.getpid() != _PARENT:
        os._exit(3)  # a worker killed mid-parse (OOM killer, signal)
    return _REAL_BUILD_CHUNK(*args)


def test_parallel_and_serial_syncs_agree(tree: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sync_module, "PARALLEL_MIN", 10**9)
    serial = run(tree, tmp_path / "serial.db")
    monkeypatch.setattr(sync_module, "PARALLEL_MIN", 16)
    monkeypatch.setattr(sync_module, "_build_chunk", _counting_chunk)
    _PARENT_CALLS.clear()
    parallel = run(tree, tmp_path / "parallel.db")
    # The chunks were parsed in the children: the parent built none itself.
    assert _PARENT_CALLS == []
    assert (parallel.valid, parallel.invalid, parallel.inferred) == (serial.valid, serial.invalid, serial.inferred) == (296, 2, 2)
    assert snapshot(tmp_path / "parallel.db") == snapshot(tmp_path / "serial.db")


def test_threads_keep_the_parse_in_process(tree: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sync_module, "PARALLEL_MIN", 16)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert sync_module._pool_context() is None
        summary = run(tree, tmp_path / "threads.db")
    finally:
        stop.set()
        other.join()
    assert summary.valid == 296


def test_a_dying_worker_does_not_fail_the_sync(tree: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sync_module, "PARALLEL_MIN", 16)
    monkeypatch.setattr(sync_module, "_build_chunk", _dying_chunk)
    summary = run(tree, tmp_path / "broken.db")
    assert (summary.valid, summary.invalid, summary.inferred) == (296, 2, 2)
