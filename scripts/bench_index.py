#!/usr/bin/env python
"""Benchmark ckpt-index against its performance targets on synthetic outputs trees.

For each N it writes N seed-shaped sidecar'd checkpoints (``ckpt_index.tools.demo.make_tree``), then
measures: a cold sync, a no-change re-sync and a one-sidecar-changed re-sync (each in a child
process that reports its peak RSS), ``--best-by`` in-process, the whole ``ckpt-index query``
process, and the seeds' way (parse every sidecar, sort) against the index answer. It prints the
query plans, and a summary table of every figure against its target.

    python scripts/bench_index.py --n 10000
    python scripts/bench_index.py --n 10000,100000 --json bench.json
    python scripts/bench_index.py --n 10000 --db postgresql+psycopg://u@host/scratch --wipe-db

Timings on a shared machine are noisy: query figures are the median (and min) of ``--repeat``.

One file of about 950 lines on purpose: a script that runs by itself from a clean clone, one
function per numbered step, with the child-process sync runner and the targets beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Targets: N -> [(key, label, comparison, bound, unit)]; a figure is PASS when ``value OP bound``.
TARGETS: dict[int, list[tuple[str, str, str, float, str]]] = {
    10_000: [
        ("cold_sync_s", "cold sync", "<=", 4.0, "s"),
        ("nochange_sync_s", "no-change re-sync", "<=", 0.5, "s"),
        ("best_by_ms", "best-by hmean in-process (median)", "<=", 10.0, "ms"),
        ("query_process_s", "whole `ckpt-index query` process (median)", "<=", 0.4, "s"),
        ("naive_ratio", "naive / in-process best-by", ">=", 100.0, "x"),
    ],
    100_000: [
        ("nochange_sync_s", "no-change re-sync", "<=", 4.0, "s"),
        ("best_by_ms", "best-by hmean in-process (median)", "<=", 20.0, "ms"),
        ("peak_rss_mb", "peak RSS during sync", "<=", 300.0, "MB"),
    ],
}

#: The CPU-time figure shown beside each wall-time target (less sensitive to a busy machine).
CPU_KEYS = {
    "cold_sync_s": "cold_sync_cpu_s",
    "nochange_sync_s": "nochange_sync_cpu_s",
    "best_by_ms": "best_by_cpu_ms",
    "query_process_s": "query_process_cpu_s",
}

#: Sync-related target keys: with ``--profile auto`` a miss on one of these triggers profiling.
SYNC_KEYS = {"cold_sync_s", "nochange_sync_s", "peak_rss_mb"}

#: Seconds in the past all generated files are dated, beyond the sync's 2 s racy-clean window.
MTIME_AGE_S = 60

#: Run in a child interpreter: one sync (optionally under cProfile), timed, with peak RSS.
CHILD_SYNC = r"""
import json, resource, sys, time
t_start = time.perf_counter()

def peak_rss_kb():
    # VmHWM is this process's own high-water mark. ru_maxrss is not: Linux carries the peak RSS
    # of the pre-exec image into it, and subprocess's vfork child shares the parent's (the
    # benchmark's) address space, so ru_maxrss would report at least the parent's peak.
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except OSError:
        pass
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb, kb

args = json.loads(sys.argv[1])
from ckpt_index.index.engine import open_engine
from ckpt_index.sync.roots import sync_roots
t_imported = time.perf_counter()
rss_imports_kb, _ = peak_rss_kb()
profiler = None
if args.get("profile"):
    import cProfile
    profiler = cProfile.Profile()
    profiler.enable()
t0 = time.perf_counter()
c0 = time.process_time()
engine = open_engine(args["db"])
t1 = time.perf_counter()
summary = sync_roots(engine, [args["root"]])
t2 = time.perf_counter()
c2 = time.process_time()
engine.dispose()
if profiler is not None:
    profiler.disable()
rss_kb, ru_maxrss_kb = peak_rss_kb()
out = {
    "import_s": t_imported - t_start,
    "open_s": t1 - t0,
    "sync_s": t2 - t1,
    "open_sync_s": t2 - t0,
    "cpu_s": c2 - c0,
    "rss_after_imports_mb": rss_imports_kb / 1024.0,
    "peak_rss_mb": rss_kb / 1024.0,
    "ru_maxrss_mb": ru_maxrss_kb / 1024.0,
    "summary": {k: v for k, v in summary.to_dict().items() if not k.endswith("_files")},
}
if profiler is not None:
    import io, pstats
    for key, count in (("cumulative", 30), ("tottime", 20)):
        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).strip_dirs().sort_stats(key).print_stats(count)
        out["profile_" + key] = buf.getvalue()
sys.stdout.write("\n@@RESULT@@" + json.dumps(out) + "\n")
"""


# ------------------------------------------------------------------------------------- helpers


def parse_ns(values: list[str] | None) -> list[int]:
    ns: list[int] = []
    for value in values or ["10000"]:
        for part in value.split(","):
            part = part.strip().replace("_", "")
            if part:
                n = int(part)
                if n <= 0:
                    raise argparse.ArgumentTypeError(f"--n must be positive, not {n}")
                ns.append(n)
    return ns


def fmt_s(seconds: float) -> str:
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


def fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "s":
        return f"{value:.3f} s"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "MB":
        return f"{value:.1f} MB"
    if unit == "x":
        return f"{value:,.0f}x"
    return f"{value:g} {unit}"


def median_min(samples: list[float]) -> tuple[float, float]:
    return statistics.median(samples), min(samples)


def timed_process(
    argv: list[str], *, env: dict[str, str] | None = None
) -> tuple[float, subprocess.CompletedProcess]:
    """Wall time of one child process; its CPU time (user + sys) is left in ``proc.cpu_s``."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc.cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, proc


def run_sync_child(db_url: str, root: str, *, profile: bool = False) -> dict[str, Any]:
    payload = json.dumps({"db": db_url, "root": root, "profile": profile})
    wall, proc = timed_process([sys.executable, "-c", CHILD_SYNC, payload])
    if proc.returncode != 0 or "@@RESULT@@" not in proc.stdout:
        raise RuntimeError(f"sync child failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.rsplit("@@RESULT@@", 1)[1])
    result["process_wall_s"] = wall
    return result


def ckpt_index_executable() -> list[str]:
    beside = Path(sys.executable).with_name("ckpt-index")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("ckpt-index")
    return [found] if found else [sys.executable, "-m", "ckpt_index"]


# ------------------------------------------------------------------------------------ database


def fresh_db(url: str, *, owned: bool, wipe: bool) -> None:
    """Make ``url`` an empty index: delete an SQLite file, or every row on another backend."""
    from sqlalchemy import delete, func, select

    from ckpt_index.index.engine import is_sqlite, open_engine, sqlite_file, write_transaction
    from ckpt_index.index.models import checkpoint_metrics, checkpoints

    if is_sqlite(url):
        path = sqlite_file(url)
        if path is None:
            raise SystemExit(
                "--db: an in-memory SQLite database cannot be shared with child processes"
            )
        files = [Path(path + suffix) for suffix in ("", "-wal", "-shm", "-journal")]
        if any(f.exists() for f in files) and not (owned or wipe):
            raise SystemExit(f"--db {url} exists; pass --wipe-db to let the benchmark delete it")
        for f in files:
            f.unlink(missing_ok=True)
        return
    engine = open_engine(url)
    try:
        with engine.connect() as conn:
            count = conn.execute(select(func.count()).select_from(checkpoints)).scalar_one()
            conn.rollback()
        if count and not wipe:
            raise SystemExit(
                f"--db {url} holds {count:,} rows; pass --wipe-db to let the "
                "benchmark delete every row before each N"
            )
        with write_transaction(engine) as conn:
            conn.execute(delete(checkpoint_metrics))
            conn.execute(delete(checkpoints))
    finally:
        engine.dispose()


def explain(conn, stmt) -> list[str]:
    """The backend's plan for ``stmt``, run with bound parameters exactly as run_query runs it.

    Not with literal binds: SQLite plans ``LIMIT 1`` differently from ``LIMIT ?`` (a full scan
    plus sort instead of a seek on ix_checkpoints_hmean), so a literal plan would mislead.
    """
    dialect = conn.dialect
    compiled = stmt.compile(dialect=dialect)
    params = compiled.construct_params()
    if compiled.positional:
        params = tuple(params[name] for name in compiled.positiontup)
    if dialect.name == "sqlite":
        rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + str(compiled), params).fetchall()
        # (id, parent, notused, detail): indent by depth in the plan tree.
        depth: dict[int, int] = {0: -1}
        lines = []
        for node_id, parent, _unused, detail in rows:
            depth[node_id] = depth.get(parent, -1) + 1
            lines.append("  " * depth[node_id] + detail)
        return lines
    if dialect.name == "postgresql":
        rows = conn.exec_driver_sql("EXPLAIN ANALYZE " + str(compiled), params).fetchall()
        return [row[0] for row in rows]
    return [f"(no EXPLAIN support in this script for {dialect.name})"]


# ------------------------------------------------------------------------------------ the steps


def change_one_sidecar(ckpt: Path, new_mtime_s: float) -> dict[str, Any]:
    """Rewrite one sidecar with a different hmean (and its hmean metrics); date it ``new_mtime``."""
    import yaml

    from ckpt_index.sidecar.files import dump_document, sidecar_path_for

    path = sidecar_path_for(ckpt)
    before = path.stat()
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    old = float(doc["metrics"]["hmean"])
    new = round(old * 0.5 + 0.0123, 6)
    doc["metrics"]["hmean"] = new
    extra = doc["metrics"].get("additional_metrics") or {}
    for key in ("val/hmean", "cleval/hmean"):
        if key in extra:
            extra[key] = new
    path.write_text(dump_document(doc), encoding="utf-8")
    os.utime(path, (new_mtime_s, new_mtime_s))
    after = path.stat()
    assert after.st_mtime_ns != before.st_mtime_ns, "changed sidecar kept its mtime"
    return {
        "sidecar": str(path),
        "checkpoint": str(ckpt),
        "old_hmean": old,
        "new_hmean": new,
        "size_before": before.st_size,
        "size_after": after.st_size,
    }


def naive_best(root: str) -> tuple[str | None, int, int]:
    """The seeds' catalog: walk, parse every sidecar, sort.

    Returns (best checkpoint, sidecars parsed, invalid sidecars).
    """
    from ckpt_index.sidecar.files import (
        SIDECAR_SUFFIX,
        SidecarError,
        checkpoint_path_for,
        read_sidecar,
    )

    entries = []
    bad = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if not name.endswith(SIDECAR_SUFFIX):
                continue
            sidecar = os.path.join(dirpath, name)
            try:
                meta = read_sidecar(sidecar)
            except SidecarError:
                bad += 1
                continue
            ckpt = str(checkpoint_path_for(sidecar))
            if meta.metrics.hmean is None or not os.path.exists(ckpt):
                continue
            entries.append(
                (meta.metrics.hmean, meta.training.epoch, meta.training.global_step, ckpt)
            )
    # Highest hmean, then higher epoch, then higher global_step, then path (the index's order).
    entries.sort(key=lambda e: (-e[0], -e[1], -e[2], e[3]))
    return (entries[0][3] if entries else None), len(entries) + bad, bad


def time_query(conn, spec, repeat: int) -> tuple[list[float], list[float], list[dict[str, Any]]]:
    from ckpt_index.query.spec import run_query

    records = run_query(conn, spec)  # warm-up (statement compilation cache, page cache)
    samples, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        records = run_query(conn, spec)
        samples.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return samples, cpu, records


@dataclass
class Bench:
    """One N's run: its arguments, where it writes, and the figures it has gathered so far."""

    n: int
    args: argparse.Namespace
    log: Any
    nd: Path
    root: Path
    root_s: str
    db_url: str
    res: dict[str, Any] = field(default_factory=dict)


def bench_one(n: int, args: argparse.Namespace, base: Path, log) -> dict[str, Any]:
    """Every figure for one N, in order: the steps share the tree, the index and ``res``."""
    nd = base / f"n{n}"
    if nd.exists():
        shutil.rmtree(nd)
    root = nd / "outputs"
    root.mkdir(parents=True)
    root_s = os.path.abspath(root)
    db_url = args.db or "sqlite:///" + str((nd / "ckpt_index.db").absolute())
    b = Bench(n, args, log, nd, root, root_s, db_url, {"n": n, "db": db_url})
    log(
        f"\n{'=' * 100}\nN = {n:,} checkpoints   (tree {root_s}; db {db_url}; load avg "
        f"{os.getloadavg()[0]:.1f})\n{'=' * 100}"
    )
    paths, stamp = generate(b)
    cold, nochange = cold_sync(b), nochange_sync(b)
    victim = paths[len(paths) // 2]
    change, one = one_change_sync(b, victim, stamp)
    b.res["peak_rss_mb"] = max(cold["peak_rss_mb"], nochange["peak_rss_mb"], one["peak_rss_mb"])
    index_best, plans = in_process_queries(b, victim, change)
    whole_process_query(b, index_best)
    seeds_way(b, index_best)
    show_plans(b, plans)
    profile_if_missed(b)
    return b.res


def generate(b: Bench) -> tuple[list[Path], float]:
    """1. The tree, every mtime out of the racy window, and the I/O floor (warms the cache)."""
    from ckpt_index.tools.demo import make_tree

    args, res, log = b.args, b.res, b.log
    t0 = time.perf_counter()
    paths = make_tree(b.root, b.n, seed=args.seed, per_experiment=args.per_experiment)
    gen_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    stamp = time.time() - MTIME_AGE_S
    n_files = 0
    for dirpath, _dirs, files in os.walk(b.root):
        for name in files:
            os.utime(os.path.join(dirpath, name), (stamp, stamp))
            n_files += 1
    utime_s = time.perf_counter() - t0
    res.update(
        generate_s=gen_s,
        utime_s=utime_s,
        files=n_files,
        experiments=len({p.parent.parent for p in paths}),
    )
    log(
        f"[1] generate  {len(paths):,} checkpoints + sidecars ({n_files:,} files, "
        f"{res['experiments']:,} experiments of {args.per_experiment}, seed {args.seed}) in "
        f"{fmt_s(gen_s)}  [not a target]"
    )
    log(
        f"    every file's mtime set {MTIME_AGE_S} s in the past with os.utime ({fmt_s(utime_s)}), "
        "so the sync's racy-clean rule (sidecars modified within 2 s of a sync are re-read)\n"
        "    does not distort the no-change figure."
    )
    # I/O floor, and it warms the page cache so that sync and naive figures start alike.
    t0 = time.perf_counter()
    read_bytes = 0
    for dirpath, _dirs, files in os.walk(b.root):
        for name in files:
            if name.endswith(".metadata.yaml"):
                with open(os.path.join(dirpath, name), "rb") as handle:
                    read_bytes += len(handle.read())
    io_s = time.perf_counter() - t0
    res.update(io_floor_s=io_s, sidecar_bytes=read_bytes)
    log(
        f"    I/O floor: walk + read every sidecar's bytes ({read_bytes / 2**20:,.1f} MiB) in "
        f"{fmt_s(io_s)} (also warms the page cache)"
    )
    return paths, stamp


def cold_sync(b: Bench) -> dict[str, Any]:
    """2. The first sync into a fresh index, in a child process."""
    n, res = b.n, b.res
    fresh_db(b.db_url, owned=True, wipe=True)  # --db was checked once in main()
    cold = run_sync_child(b.db_url, b.root_s)
    s = cold["summary"]
    res["cold"] = cold
    res["cold_sync_s"] = cold["open_sync_s"]
    res["cold_sync_cpu_s"] = cold["cpu_s"]
    rate = n / cold["open_sync_s"]
    res["cold_rate_per_s"] = rate
    b.log(
        f"[2] cold sync (fresh DB, child process)\n"
        f"    open+sync {fmt_s(cold['open_sync_s'])} = {rate:,.0f} checkpoints/s, CPU "
        f"{fmt_s(cold['cpu_s'])}  "
        f"(schema creation {fmt_s(cold['open_s'])}, sync_roots {fmt_s(cold['sync_s'])}; "
        f"imports {fmt_s(cold['import_s'])}; whole process {fmt_s(cold['process_wall_s'])})\n"
        f"    peak RSS {cold['peak_rss_mb']:.1f} MB (after imports "
        f"{cold['rss_after_imports_mb']:.1f} MB; "
        f"ru_maxrss {cold['ru_maxrss_mb']:.1f} MB, see note);"
        f" parsed {s['parsed']:,}, added {s['added']:,}, valid {s['valid']:,}, invalid "
        f"{s['invalid']:,}"
    )
    if s["added"] != n or s["valid"] != n:
        b.log(f"    !! expected {n:,} added and valid rows")
    return cold


def nochange_sync(b: Bench) -> dict[str, Any]:
    """3. A sync with nothing changed: nothing may be parsed."""
    res, log = b.res, b.log
    nochange = run_sync_child(b.db_url, b.root_s)
    s = nochange["summary"]
    res["nochange"] = nochange
    res["nochange_sync_s"] = nochange["open_sync_s"]
    res["nochange_sync_cpu_s"] = nochange["cpu_s"]
    res["nochange_parsed_ok"] = s["parsed"] == 0
    log(
        f"[3] no-change re-sync (child process)\n"
        f"    open+sync {fmt_s(nochange['open_sync_s'])}, CPU {fmt_s(nochange['cpu_s'])} (open "
        f"{fmt_s(nochange['open_s'])}, "
        f"sync_roots {fmt_s(nochange['sync_s'])}; whole process "
        f"{fmt_s(nochange['process_wall_s'])});"
        f" peak RSS {nochange['peak_rss_mb']:.1f} MB\n"
        f"    parsed {s['parsed']} ({'OK, == 0' if s['parsed'] == 0 else 'UNEXPECTED, want 0'}), "
        f"unchanged {s['unchanged']:,}, updated {s['updated']}, removed {s['removed']}"
    )

    return nochange


def one_change_sync(b: Bench, victim: Path, stamp: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """4. A sync after one sidecar changed: exactly that one is parsed."""
    res, log, root_s = b.res, b.log, b.root_s
    change = change_one_sidecar(victim, stamp + 1)
    one = run_sync_child(b.db_url, root_s)
    s = one["summary"]
    res["one_change"] = one
    res["one_change_sync_s"] = one["open_sync_s"]
    res["one_change_parsed_ok"] = s["parsed"] == 1
    res["changed"] = change
    log(
        f"[4] re-sync after changing one sidecar ({Path(change['sidecar']).relative_to(root_s)}: "
        f"hmean {change['old_hmean']} -> {change['new_hmean']}, size {change['size_before']} -> "
        f"{change['size_after']} B, mtime +1 s)\n"
        f"    open+sync {fmt_s(one['open_sync_s'])}, CPU {fmt_s(one['cpu_s'])} (sync_roots "
        f"{fmt_s(one['sync_s'])}; whole process "
        f"{fmt_s(one['process_wall_s'])}); peak RSS {one['peak_rss_mb']:.1f} MB\n"
        f"    parsed {s['parsed']} ({'OK, == 1' if s['parsed'] == 1 else 'UNEXPECTED, want 1'}), "
        f"updated {s['updated']}, unchanged {s['unchanged']:,}"
    )
    return change, one


def time_spec(b: Bench, conn, key: str, spec, label: str) -> str | None:
    """Time one query spec in process, record its figures under ``key``; returns the first row's
    checkpoint (the best)."""
    samples, cpu, records = time_query(conn, spec, b.args.repeat)
    med, low = median_min(samples)
    b.res[key] = {
        "median_ms": med * 1000,
        "min_ms": low * 1000,
        "cpu_median_ms": statistics.median(cpu) * 1000,
        "samples_ms": [x * 1000 for x in samples],
        "rows": len(records),
    }
    extra = ""
    if key == "best_by_hmean" and records:
        extra = f"  -> hmean {records[0]['hmean']} epoch {records[0]['epoch']}"
    b.log(
        f"    {label:<40} median {med * 1000:8.2f} ms   min {low * 1000:8.2f} ms   "
        f"(CPU {statistics.median(cpu) * 1000:.2f} ms)   rows {len(records):,}{extra}"
    )
    return records[0]["checkpoint_path"] if records else None


def in_process_queries(
    b: Bench, victim: Path, change: dict[str, Any]
) -> tuple[str | None, dict[str, list[str]]]:
    """5. run_query in this process on a read-only engine; returns the best and the plans."""
    from ckpt_index.index.engine import open_engine
    from ckpt_index.query.spec import QuerySpec, build_query

    args, res, log, db_url = b.args, b.res, b.log, b.db_url
    t0 = time.perf_counter()
    engine = open_engine(db_url, readonly=True)
    open_ro_s = time.perf_counter() - t0
    specs = [
        ("best_by_hmean", QuerySpec(best_by="hmean"), "--best-by hmean (column)"),
        ("best_by_val_loss", QuerySpec(best_by="val/loss"), "--best-by val/loss (metrics table)"),
        (
            "best_by_hmean_group",
            QuerySpec(best_by="hmean", group_by="exp_name"),
            "--best-by hmean --group-by exp_name",
        ),
    ]
    index_best = None
    plans: dict[str, list[str]] = {}
    try:
        with engine.connect() as conn:
            # The changed row must carry its new hmean.
            from sqlalchemy import select

            from ckpt_index.index.tables import checkpoints

            stored = conn.execute(
                select(checkpoints.c.hmean).where(
                    checkpoints.c.checkpoint_path == os.path.abspath(victim)
                )
            ).scalar()
            res["changed_row_hmean_ok"] = (
                stored is not None and abs(stored - change["new_hmean"]) < 1e-12
            )
            log(
                f"[5] in-process queries (read-only engine opened once in {fmt_s(open_ro_s)}, one "
                f"warm-up, then {args.repeat} timed run_query calls)\n"
                f"    changed row now has hmean {stored} "
                f"({'OK' if res['changed_row_hmean_ok'] else 'UNEXPECTED'})"
            )
            for key, spec, label in specs:
                best = time_spec(b, conn, key, spec, label)
                if key == "best_by_hmean":
                    index_best = best
            res["best_by_ms"] = res["best_by_hmean"]["median_ms"]
            res["best_by_cpu_ms"] = res["best_by_hmean"]["cpu_median_ms"]
            res["index_best"] = index_best
            for _key, spec, label in specs:
                plans[label] = explain(conn, build_query(spec))
    finally:
        engine.dispose()

    return index_best, plans


def whole_process_query(b: Bench, index_best: str | None) -> None:
    """6. ``ckpt-index query`` as a whole process, beside the cost of importing the CLI."""
    args, res, log, db_url = b.args, b.res, b.log, b.db_url
    exe = ckpt_index_executable()
    argv = [*exe, "query", "--best-by", "hmean", "--db", db_url, "--format", "json"]
    walls, cpus = [], []
    cli_best = None
    for i in range(args.repeat + 1):  # the first run warms the page cache; not counted
        wall, proc = timed_process(argv)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr}")
        if i == 0:
            out = json.loads(proc.stdout)
            cli_best = (out[0] if isinstance(out, list) else out)["checkpoint_path"]
        else:
            walls.append(wall)
            cpus.append(proc.cpu_s)
    imports = [
        timed_process([sys.executable, "-c", "import ckpt_index.cli"])[0]
        for _ in range(args.repeat)
    ]
    bare = [timed_process([sys.executable, "-c", "pass"])[0] for _ in range(args.repeat)]
    med, low = median_min(walls)
    res["query_process_s"] = med
    res["query_process_cpu_s"] = statistics.median(cpus)
    res["query_process"] = {
        "median_s": med,
        "min_s": low,
        "samples_s": walls,
        "import_cli_median_s": statistics.median(imports),
        "python_bare_median_s": statistics.median(bare),
        "same_answer": cli_best == index_best,
    }
    log(
        f"[6] whole process `{' '.join(['ckpt-index', *argv[len(exe) :]])}`\n"
        f"    median {fmt_s(med)}   min {fmt_s(low)}   (CPU {fmt_s(statistics.median(cpus))}; of "
        f"{args.repeat}, after one untimed run); "
        f"answer {'matches' if cli_best == index_best else 'DIFFERS from'} the in-process one\n"
        '    context: `python -c "import ckpt_index.cli"` '
        f"median {fmt_s(statistics.median(imports))}, "
        f"`python -c pass` median {fmt_s(statistics.median(bare))}"
    )


def seeds_way(b: Bench, index_best: str | None) -> None:
    """7. The seeds' way (parse every sidecar, then sort), up to --skip-naive-above."""
    n, args, res, log, root_s = b.n, b.args, b.res, b.log, b.root_s
    if n <= args.skip_naive_above:
        t0 = time.perf_counter()
        naive, parsed, bad = naive_best(root_s)
        naive_s = time.perf_counter() - t0
        ratio = naive_s * 1000 / res["best_by_ms"]
        res.update(
            naive_s=naive_s,
            naive_best=naive,
            naive_ratio=ratio,
            naive_same_answer=naive == index_best,
        )
        same = (
            "SAME as the index answer"
            if naive == index_best
            else f"DIFFERENT from the index answer {index_best}"
        )
        log(
            f"[7] the seeds' way: walk + read_sidecar on every sidecar ({parsed:,} parsed, {bad} "
            "invalid) "
            f"+ sort: {fmt_s(naive_s)} ({parsed / naive_s:,.0f} sidecars/s)\n"
            f"    best: {Path(naive).relative_to(root_s) if naive else None}  -> "
            f"{same}\n"
            f"    naive / in-process best-by (median) = {ratio:,.0f}x"
        )
    else:
        res.update(naive_s=None, naive_ratio=None)
        log(f"[7] the seeds' way: skipped (N > --skip-naive-above {args.skip_naive_above:,})")


def show_plans(b: Bench, plans: dict[str, list[str]]) -> None:
    """8. The query plans the index answers with."""
    from ckpt_index.index.engine import is_sqlite

    n, log, db_url = b.n, b.log, b.db_url
    log(
        f"[8] query plans at N = {n:,} "
        f"({'EXPLAIN QUERY PLAN' if is_sqlite(db_url) else 'EXPLAIN ANALYZE'}, "
        "bound parameters as run_query sends them):"
    )
    for label, lines in plans.items():
        log(f"    {label}:")
        for line in lines:
            log(f"      {line}")
    b.res["plans"] = plans


def profile_if_missed(b: Bench) -> None:
    """Profiling: extra child runs on a scratch DB, so the figures above are unaffected."""
    n, args, res, log, nd, root_s = b.n, b.args, b.res, b.log, b.nd, b.root_s
    misses = [
        k
        for k, _l, op, bound, _u in TARGETS.get(n, [])
        if k in SYNC_KEYS and not check(res.get(k), op, bound)
    ]
    if args.profile == "always" or (args.profile == "auto" and misses):
        prof_db = "sqlite:///" + str((nd / "profile.db").absolute())
        fresh_db(prof_db, owned=True, wipe=True)
        why = f" (missed: {', '.join(misses)})" if misses else ""
        for label, key in (
            ("cold sync", "profile_cold"),
            ("no-change re-sync", "profile_nochange"),
        ):
            prof = run_sync_child(prof_db, root_s, profile=True)
            res[key] = {k: prof[k] for k in ("profile_cumulative", "profile_tottime")}
            log(
                f"[profile] {label} under cProfile{why}: open+sync {fmt_s(prof['open_sync_s'])} "
                "(cProfile overhead included)"
            )
            log(_indent(_trim_profile(prof["profile_cumulative"]), 4))
            log(_indent(_trim_profile(prof["profile_tottime"]), 4))


def _trim_profile(text: str) -> str:
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if "function calls" in line), 0)
    return "\n".join(line for line in lines[start:] if line.strip())


def _indent(text: str, width: int) -> str:
    return "\n".join(" " * width + line for line in text.splitlines())


def check(value: float | None, op: str, bound: float) -> bool:
    if value is None:
        return False
    return value <= bound if op == "<=" else value >= bound


def summary_table(results: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    rows = []
    for res in results:
        n = res["n"]
        for key, label, op, bound, unit in TARGETS.get(n, []):
            value = res.get(key)
            cpu = res.get(CPU_KEYS.get(key, ""))
            rows.append(
                {
                    "n": n,
                    "figure": key,
                    "label": label,
                    "value": value,
                    "target": f"{op} {bound:g} {unit}",
                    "pass": check(value, op, bound),
                    "cpu": cpu,
                    "cpu_pass": None if cpu is None else check(cpu, op, bound),
                }
            )
        # Correctness checks ride along in the table: they must hold at every N.
        for key, label in (
            ("nochange_parsed_ok", "no-change re-sync parsed == 0"),
            ("one_change_parsed_ok", "one-change re-sync parsed == 1"),
            ("changed_row_hmean_ok", "changed row carries the new hmean"),
            ("naive_same_answer", "naive answer == index answer"),
        ):
            if key in res:
                rows.append(
                    {
                        "n": n,
                        "figure": key,
                        "label": label,
                        "value": res[key],
                        "target": "true",
                        "pass": bool(res[key]),
                    }
                )
    lines = [
        f"{'N':>9}  {'figure':<44} {'value':>12}  {'CPU time':>10}  {'target':<12} result",
        "-" * 100,
    ]
    for row in rows:
        unit = row["target"].split()[-1]
        value = row["value"]
        shown = ("yes" if value else "no") if isinstance(value, bool) else fmt_value(value, unit)
        cpu = "" if row.get("cpu") is None else fmt_value(row["cpu"], unit)
        verdict = "PASS" if row["pass"] else "FAIL"
        if not row["pass"] and row.get("cpu_pass"):
            verdict += " (CPU time within target: contention?)"
        lines.append(
            f"{row['n']:>9,}  {row['label']:<44} {shown:>12}  {cpu:>10}  {row['target']:<12} "
            f"{verdict}"
        )
    if not rows:
        lines.append(
            "(no targets are defined for these N; targets exist for N = 10,000 and 100,000)"
        )
    return lines, rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--n",
        action="append",
        metavar="N[,N...]",
        help="checkpoints to generate (repeatable or comma list) [default: 10000]",
    )
    parser.add_argument(
        "--workdir",
        help="where trees and the default SQLite DB go "
        "[default: a temporary directory, removed at the end unless --keep]",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the generated trees and databases"
    )
    parser.add_argument(
        "--db",
        help="SQLAlchemy URL of another backend to benchmark "
        "[default: a SQLite file per N in the workdir]; it is emptied before each N",
    )
    parser.add_argument(
        "--wipe-db", action="store_true", help="allow emptying a --db that already holds data"
    )
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per query [default: 5]")
    parser.add_argument("--seed", type=int, default=0, help="make_tree seed [default: 0]")
    parser.add_argument(
        "--per-experiment", type=int, default=20, help="checkpoints per experiment [default: 20]"
    )
    parser.add_argument(
        "--skip-naive-above",
        type=int,
        default=100_000,
        metavar="N",
        help="skip the parse-every-sidecar baseline above N [default: 100000, i.e. run it]",
    )
    parser.add_argument(
        "--profile",
        choices=("never", "auto", "always"),
        default="never",
        help="cProfile an extra cold and no-change sync (auto: when a sync target fails)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write every figure as JSON")
    return parser


def environment(ns: list[int], args: argparse.Namespace, base: Path, log) -> dict[str, Any]:
    """The machine and library versions, logged with how the figures are measured."""
    import sqlite3

    import sqlalchemy
    import yaml

    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "sqlalchemy": sqlalchemy.__version__,
        "sqlite": sqlite3.sqlite_version,
        "yaml_c_loader": hasattr(yaml, "CSafeLoader"),
        "loadavg": os.getloadavg(),
    }
    log(
        f"ckpt-index benchmark: N = {', '.join(f'{n:,}' for n in ns)}; repeat {args.repeat}; "
        f"workdir {base}"
    )
    log(
        f"python {env['python']} on {env['platform']}, {env['cpus']} CPUs (load avg "
        f"{', '.join(f'{x:.2f}' for x in env['loadavg'])}); SQLAlchemy {env['sqlalchemy']}; "
        f"SQLite {env['sqlite']}; libyaml C loader: {env['yaml_c_loader']}"
    )
    log(
        "Sync figures are measured in a child interpreter: 'open+sync' = open_engine (schema "
        "creation/check) + sync_roots, without interpreter start-up and imports (shown "
        "separately);\n"
        "peak RSS is the child's VmHWM from /proc/self/status (imports included). The child's "
        "getrusage ru_maxrss is shown too but is\nnot used: Linux carries the pre-exec peak into "
        "it, "
        "and subprocess spawns via vfork, so it reports at least this benchmark process's own RSS."
    )
    return env


def run_all(
    ns: list[int], args: argparse.Namespace, base: Path, created: bool, env: dict[str, Any], log
) -> bool:
    """Every N, then the summary against the targets; True when a check failed."""
    results: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    try:
        for i, n in enumerate(ns):
            res = bench_one(n, args, base, log)
            res["loadavg_after"] = os.getloadavg()
            results.append(res)
            if not args.keep and i < len(ns) - 1:
                log(f"(removing the N = {n:,} tree)")
                shutil.rmtree(base / f"n{n}", ignore_errors=True)

        lines, rows = summary_table(results)
        log(
            f"\n{'=' * 100}\nSUMMARY (timings noisy: shared {env['cpus']}-CPU machine; load avg at "
            f"start {env['loadavg'][0]:.1f}, at end {os.getloadavg()[0]:.1f})\n{'=' * 100}"
        )
        for line in lines:
            log(line)
        failed = [r for r in rows if not r["pass"]]
        failures = ", ".join(f"N={r['n']:,} {r['label']}" for r in failed)
        log(
            f"\n{len(rows) - len(failed)} of {len(rows)} checks pass"
            + (f"; FAIL: {failures}" if failed else "")
        )
        if args.json:
            Path(args.json).write_text(
                json.dumps(
                    {"env": env, "results": results, "summary": rows}, indent=2, default=str
                ),
                encoding="utf-8",
            )
            log(f"figures written to {args.json}")
    finally:
        if args.keep:
            log(f"\nkept: {base}")
        elif created:
            log(f"(removing {base})")
            shutil.rmtree(base, ignore_errors=True)
        else:
            for n in ns:
                shutil.rmtree(base / f"n{n}", ignore_errors=True)
    return bool(failed)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        ns = parse_ns(args.n)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        parser.error(str(exc))
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")

    def log(text: str = "") -> None:
        print(text, flush=True)

    if args.db is not None and "://" not in args.db:
        from ckpt_index.index.engine import resolve_db_url

        args.db = resolve_db_url(args.db)
    if args.db is not None:
        # Refuse up front to empty a --db that held data before this run (unless --wipe-db);
        # between N values the benchmark empties its own rows without asking.
        fresh_db(args.db, owned=False, wipe=args.wipe_db)
    created = args.workdir is None
    base = Path(
        tempfile.mkdtemp(prefix="ckpt-index-bench-") if created else args.workdir
    ).absolute()
    base.mkdir(parents=True, exist_ok=True)
    env = environment(ns, args, base, log)
    return 1 if run_all(ns, args, base, created, env, log) else 0


if __name__ == "__main__":
    sys.exit(main())
