#!/usr/bin/env python
"""Benchmark ``query --varying`` over 10,000 selected checkpoints (target: <= 0.5 s).

Builds an index directly (executemany, not a sync) of ``--n`` checkpoints with ``--params``
parameters per set, in two layouts:

- ``runs``: runs of ``--per-run`` checkpoints sharing one set (1,000 sets at 10,000 rows), a
  sweep over lr x batch_size x encoder (3 varied parameters, the rest fixed config);
- ``own``: the worst case, every checkpoint its own set (10,000 sets, 1.5 million values), each
  also differing in a ``step`` parameter.

Then times, in-process, ``run_query`` of every checkpoint (10,000 rows, their metrics) without
and with ``--varying`` (``ParamsWanted(varying=True)``: the varying names from the distinct sets,
grouped by name, then the values of those names for the sets). The target is on what
``--varying`` adds (median over ``--repeat`` runs); the whole query is printed beside it.

    python scripts/bench_params_varying.py
    python scripts/bench_params_varying.py --db postgresql+psycopg://postgres@127.0.0.1:5432/test

A --db that already holds checkpoints is refused (the benchmark fills it); use a scratch
database. Exit 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGET_S = 0.5

LRS = (1e-2, 5e-3, 2e-3, 1e-3, 5e-4, 2e-4, 1e-4, 5e-5)
BATCHES = (8, 16, 32, 64, 128)
ENCODERS = ("resnet18", "resnet50", "mobilenetv3", "convnext_tiny")


def param_rows(set_id: int, lr: float, batch: int, encoder: str, size: int, step: int | None):
    """``size`` parameters: the swept ones (and ``step`` when every row has its own set), then
    fixed filler config shared by every set."""
    values: list[tuple[str, Any]] = [
        ("model.optimizer.lr", lr),
        ("data.batch_size", batch),
        ("model.encoder", encoder),
        ("model.optimizer.name", "adamw"),
        ("trainer.max_epochs", 50),
        ("data.augment", True),
        ("model.layers", [64, 128, 256]),
    ]
    if step is not None:
        values.append(("step", step))
    k = 0
    while len(values) < size:
        k += 1
        values.append((f"cfg{k // 10}.option{k % 10}", k if k % 3 else f"value{k}"))
    from ckpt_index.hyperparams import encode_value

    rows = []
    for name, value in values[:size]:
        kind, numeric, text = encode_value(value)
        rows.append(
            {
                "param_set_id": set_id,
                "name": name,
                "value_type": kind,
                "numeric_value": numeric,
                "text_value": text,
                "source": "sidecar",
                "overridden": False,
            }
        )
    return rows


def fill(engine: Any, n: int, per_run: int, params: int, own: bool) -> None:
    from sqlalchemy import insert

    from ckpt_index.index.engine import write_transaction
    from ckpt_index.index.tables import checkpoints, param_sets, param_values

    grid = list(itertools.product(LRS, BATCHES, ENCODERS))
    with write_transaction(engine) as conn:
        sets, values, rows = [], [], []
        for i in range(n):
            run, epoch = divmod(i, per_run)
            lr, batch, encoder = grid[run % len(grid)]
            set_id = i + 1 if own else run + 1
            if own or epoch == 0:
                sets.append({"id": set_id, "digest": f"bench-{set_id}", "size": params})
                values += param_rows(set_id, lr, batch, encoder, params, i if own else None)
            rows.append(
                {
                    "location": "",
                    "checkpoint_path": f"/bench/run{run:06d}/checkpoints/epoch-{epoch:02d}.ckpt",
                    "exp_name": f"sweep_{run:06d}",
                    "encoder": encoder,
                    "epoch": epoch,
                    "global_step": 100 * (epoch + 1),
                    "hmean": 0.5 + 0.01 * epoch + (run % 997) * 1e-6,
                    "source": "sidecar",
                    "status": "valid",
                    "checkpoint_exists": True,
                    "indexed_at": "2026-01-01T00:00:00",
                    "param_set_id": set_id,
                }
            )
        conn.execute(insert(param_sets), sets)
        for start in range(0, len(values), 50_000):
            conn.execute(insert(param_values), values[start : start + 50_000])
        for start in range(0, len(rows), 50_000):
            conn.execute(insert(checkpoints), rows[start : start + 50_000])
    with write_transaction(engine) as conn:
        conn.exec_driver_sql("ANALYZE")


def clear(engine: Any) -> None:
    from ckpt_index.index.engine import write_transaction

    with write_transaction(engine) as conn:
        for table in ("checkpoint_metrics", "checkpoints", "param_values", "param_sets"):
            conn.exec_driver_sql(f"DELETE FROM {table}")


def timed(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(engine: Any, repeat: int) -> dict[str, Any]:
    from ckpt_index.query.params import ParamsWanted, varying_names
    from ckpt_index.query.spec import QuerySpec, run_query

    spec = QuerySpec()
    found: dict[str, Any] = {}
    with engine.connect() as conn:

        def plain() -> None:
            found["rows"] = len(run_query(conn, spec))

        def varying() -> None:
            wanted = ParamsWanted(varying=True)
            run_query(conn, spec, params=wanted)
            found["varying"] = wanted.found_varying

        def names_only() -> None:
            varying_names(conn, set_ids)

        plain()
        varying()  # warm both
        set_ids = [r[0] for r in conn.exec_driver_sql("SELECT param_set_id FROM checkpoints")]
        without = timed(plain, repeat)
        with_varying = timed(varying, repeat)
        names_s = timed(names_only, repeat)
    return {
        "varying_names_s": round(names_s, 4),
        "rows": found["rows"],
        "varying": found["varying"],
        "query_s": round(without, 4),
        "query_varying_s": round(with_varying, 4),
        "varying_added_s": round(max(0.0, with_varying - without), 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="selected checkpoints (10000)")
    parser.add_argument("--per-run", type=int, default=10, help="checkpoints per run (10)")
    parser.add_argument("--params", type=int, default=150, help="parameters per set (150)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per layout (5)")
    parser.add_argument("--db", help="index URL (default: a temporary SQLite file)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()

    from ckpt_index.index.engine import disposing, open_engine

    with tempfile.TemporaryDirectory() as tmp:
        url = args.db or "sqlite:///" + str(Path(tmp) / "bench.db")
        with disposing(open_engine(url)) as engine:
            with engine.connect() as conn:
                if conn.exec_driver_sql("SELECT 1 FROM checkpoints LIMIT 1").first():
                    print(f"{url} holds checkpoints: use a scratch database", file=sys.stderr)
                    return 2
            figures: dict[str, Any] = {
                "n": args.n,
                "params": args.params,
                "backend": url.split(":")[0],
            }
            for layout in ("runs", "own"):
                started = time.perf_counter()
                fill(engine, args.n, args.per_run, args.params, own=layout == "own")
                filled = time.perf_counter() - started
                figures[layout] = {"fill_s": round(filled, 2), **measure(engine, args.repeat)}
                clear(engine)
    print(f"backend {figures['backend']}, {args.n} selected checkpoints, {args.params} params/set")
    ok = True
    for layout, label in (
        ("runs", f"runs of {args.per_run} sharing a set"),
        ("own", "every checkpoint its own set"),
    ):
        f = figures[layout]
        met = f["varying_added_s"] <= TARGET_S
        ok &= met
        query_ms, total_ms = f["query_s"] * 1000, f["query_varying_s"] * 1000
        print(
            f"  {label}: {f['rows']} rows, varying {f['varying']}\n"
            f"    query {query_ms:.0f} ms, with --varying {total_ms:.0f} ms:"
            f" --varying adds {f['varying_added_s'] * 1000:.0f} ms"
            f" (the varying names alone {f['varying_names_s'] * 1000:.0f} ms)"
            f" (target <= {TARGET_S * 1000:.0f} ms: {'met' if met else 'MISSED'})"
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
