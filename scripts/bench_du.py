#!/usr/bin/env python
"""Benchmark ``ckpt-index du`` (``disk_usage``) at 100,000 indexed checkpoints (issue 13).

Builds an index of N checkpoints directly (executemany, not a sync: ``du`` reads only the
index): runs of ``--per-run`` checkpoints, ``--runs-per-exp`` runs per experiment, four encoders,
sizes of a few hundred MB. Then times ``disk_usage`` as the CLI calls it (the index opened
read-only, the GROUP BY, the engine disposed) by exp_name, by run (the checkpoint's folder,
computed in SQL) and by status, and by exp_name under one root: median and minimum of
``--repeat`` calls. On SQLite (a temporary file) the target is <= 0.5 s by exp_name and by run;
PostgreSQL figures follow on a scratch database created and dropped on the server at ``--pg``
(skipped when it cannot be reached, or with ``--no-pg``).

    python scripts/bench_du.py --n 100000
    python scripts/bench_du.py --n 100000 --pg postgresql+psycopg://postgres@127.0.0.1:5432/test

Exit 1 when a SQLite target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

TARGET_S = 0.5
TARGET_SHAPES = ("exp_name", "run")
ENCODERS = ("resnet18", "resnet50", "mobilenetv3", "convnext_tiny")
STATUSES = ("valid",) * 97 + ("invalid", "inferred", "unreadable")
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def fill(engine: Any, n: int, per_run: int, runs_per_exp: int, location: str) -> float:
    """Insert ``n`` checkpoint rows of this location; return the seconds it took."""
    from sqlalchemy import insert

    from ckpt_index.index.engine import write_transaction
    from ckpt_index.index.tables import checkpoints

    started = time.perf_counter()
    rows = []
    for i in range(n):
        run, epoch = divmod(i, per_run)
        exp = run // runs_per_exp
        rows.append(
            {
                "location": location,
                "checkpoint_path": (
                    f"/bench/outputs/exp{exp:05d}-dbnet_training_{run:06d}/checkpoints/"
                    f"epoch-{epoch:02d}_step-{100 * (epoch + 1):06d}.ckpt"
                ),
                "sidecar_path": None,
                "exp_name": f"exp{exp:05d}",
                "architecture": "dbnet",
                "encoder": ENCODERS[run % len(ENCODERS)],
                "training_phase": "training",
                "epoch": epoch,
                "global_step": 100 * (epoch + 1),
                "source": "sidecar",
                "status": STATUSES[i % len(STATUSES)],
                # One in 50 rows is an orphaned sidecar (not counted).
                "checkpoint_exists": i % 50 != 0,
                "ckpt_size": 200_000_000 + (i * 7919) % 100_000_000,
                "sidecar_size": 1_500 + i % 500,
                "indexed_at": "2026-01-01T00:00:00",
            }
        )
    with write_transaction(engine) as conn:
        for start in range(0, len(rows), 20_000):
            conn.execute(insert(checkpoints), rows[start : start + 20_000])
    with write_transaction(engine) as conn:
        conn.exec_driver_sql("ANALYZE")
    return time.perf_counter() - started


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, float, Any]:
    """(median s, min s, the last result) of ``repeat`` calls after one warm-up call."""
    result = fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), min(times), result


def measure(url: str, args: argparse.Namespace, location: str) -> dict[str, Any]:
    """Fill the index at ``url`` and time each shape; print and return the figures."""
    from ckpt_index.index.engine import disposing, open_engine
    from ckpt_index.tools.du import disk_usage

    with disposing(open_engine(url)) as engine:
        backend = engine.dialect.name
        fill_s = fill(engine, args.n, args.per_run, args.runs_per_exp, location)
    print(f"{backend}: filled {args.n:,} rows in {fill_s:.1f} s")
    root = "/bench/outputs"
    one_exp = f"/bench/outputs/exp{0:05d}-dbnet_training_{0:06d}"
    shapes: dict[str, tuple[str, str | None]] = {
        "exp_name": ("exp_name", None),
        "run": ("run", None),
        "status": ("status", None),
        "exp_name_under_root": ("exp_name", root),
        "run_under_one_run": ("run", one_exp),
    }
    figures: dict[str, Any] = {"backend": backend, "fill_s": fill_s}
    for key, (by, under) in shapes.items():

        def call(by: str = by, under: str | None = under) -> Any:
            # Not resolved against this machine's filesystem: the rows are synthetic.
            return (
                disk_usage(None, by=by, db=url, location=location)
                if under is None
                else (_under(url, by, under, location))
            )

        median, best, usage = timed(call, args.repeat)
        figures[f"{key}_s"], figures[f"{key}_min_s"] = median, best
        total = usage.total
        print(
            f"  du --by {by}{' under ' + under if under else ''}: {len(usage.groups):,} groups, "
            f"{total.count:,} checkpoints, {total.size}; median {median * 1000:.1f} ms, "
            f"min {best * 1000:.1f} ms"
        )
    return figures


def _under(url: str, by: str, root: str, location: str) -> Any:
    """``disk_usage`` under a root that exists only in the index (the rows are synthetic)."""
    from ckpt_index.index.engine import disposing, open_engine
    from ckpt_index.tools.du import DiskUsage, usage_groups

    with disposing(open_engine(url, readonly=True)) as engine:
        with engine.connect() as conn:
            groups = usage_groups(conn, by, (root,), location)
    return DiskUsage(by, (root,), location, tuple(groups))


def postgres(args: argparse.Namespace, location: str) -> dict[str, Any] | None:
    """The figures on a scratch database of the server at ``--pg``, created and dropped here."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(args.pg, isolation_level="AUTOCOMMIT")
    name = f"ckpt_bench_du_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - the PostgreSQL figures are optional
        print(f"postgresql: skipped ({exc.__class__.__name__}: {' '.join(str(exc).split())[:120]})")
        admin.dispose()
        return None
    try:
        url = make_url(args.pg).set(database=name).render_as_string(hide_password=False)
        return measure(url, args, location)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="checkpoints (default 100000)")
    parser.add_argument("--per-run", type=int, default=10, help="checkpoints per run (10)")
    parser.add_argument("--runs-per-exp", type=int, default=20, help="runs per experiment (20)")
    parser.add_argument("--repeat", type=int, default=7, help="timed calls per shape (7)")
    parser.add_argument("--pg", default=os.environ.get("CKPT_INDEX_BENCH_PG", DEFAULT_PG))
    parser.add_argument("--no-pg", action="store_true", help="SQLite only")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()

    import sqlite3

    location = "bench-du"
    print(
        f"N = {args.n:,} checkpoints, {args.per_run} per run, {args.runs_per_exp} runs per "
        f"experiment; SQLite {sqlite3.sqlite_version}"
    )
    with tempfile.TemporaryDirectory(prefix="bench_du_") as tmp:
        figures = {"n": args.n, "sqlite": measure(f"sqlite:///{tmp}/index.db", args, location)}
    if not args.no_pg:
        figures["postgresql"] = postgres(args, location)

    print("\nsummary")
    failed = False
    for shape in TARGET_SHAPES:
        value = figures["sqlite"][f"{shape}_s"]
        verdict = "PASS" if value <= TARGET_S else "MISS"
        failed |= verdict == "MISS"
        print(f"  SQLite du --by {shape}: {value * 1000:.1f} ms (target <= 500 ms) {verdict}")
    if figures.get("postgresql"):
        for shape in TARGET_SHAPES:
            value = figures["postgresql"][f"{shape}_s"]
            print(f"  PostgreSQL du --by {shape}: {value * 1000:.1f} ms")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
