#!/usr/bin/env python
"""Benchmark what hyperparameters cost a sync (target: a cold sync within 1.5x of the same tree
without them).

Writes ``--count`` seed-shaped sidecar'd checkpoints (``ckpt_index.tools.demo.make_tree``) in runs
of ``--per-run`` (a sweep: 10 checkpoints per run), three times:

- ``plain``: the sidecars as they are, no ``hyperparameters``;
- ``params``: the same sidecars with a realistic nested config of ``--params`` leaves (model,
  optimizer, scheduler, data, trainer sections: ints, floats, strings, bools, a few lists) and
  the ``hydra_overrides`` of a sweep; the runs differ in 2-3 values, so the checkpoints of a run
  share one parameter set;
- ``distinct``: the worst case, every sidecar with its own set (printed, no target).

Every file's mtime is set an hour back (files modified within the last 2 s are re-read by every
sync). Then ``--repeat`` rounds, alternating the trees: each a cold sync into an empty index (an
in-process ``open_engine`` + ``sync_roots`` in a fresh child process) followed by a re-sync with
nothing changed. It prints the medians and the ratio ``params / plain`` of the cold syncs.

    python scripts/bench_params_sync.py
    python scripts/bench_params_sync.py --count 10000 --params 150 --repeat 3
    python scripts/bench_params_sync.py --db postgresql+psycopg://u@host/scratch --wipe-db
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
from pathlib import Path
from typing import Any

TARGET_RATIO = 1.5
HOUR_S = 3600

CHILD_SYNC = r"""
import json, sys, time
args = json.loads(sys.argv[1])
from ckpt_index.index.engine import open_engine
from ckpt_index.sync.roots import sync_roots
profiler = None
if args["profile"]:
    import cProfile
    profiler = cProfile.Profile()
    profiler.enable()
t0 = time.perf_counter()
c0 = time.process_time()
engine = open_engine(args["db"])
t1 = time.perf_counter()
summary = sync_roots(engine, [args["root"]])
t2 = time.perf_counter()
engine.dispose()
if profiler is not None:
    import io, pstats
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(30)
    print(out.getvalue(), file=sys.stderr)
print("@@RESULT@@" + json.dumps({
    "open_s": t1 - t0, "sync_s": t2 - t1, "open_sync_s": t2 - t0,
    "cpu_s": time.process_time() - c0,
    "parsed": summary.parsed, "added": summary.added, "unchanged": summary.unchanged,
    "line": summary.one_line(),
}))
"""

ENCODERS = ("resnet18", "resnet50", "convnext_tiny", "efficientnet_b0", "mobilenetv3_large")
LEARNING_RATES = (0.1, 0.03, 0.01, 0.003, 0.001, 0.0003)
BATCH_SIZES = (8, 16, 32, 64)


def config(run: int, n_params: int) -> dict[str, Any]:
    """A training config with ``n_params`` leaves; runs differ in 2-3 values (a sweep)."""
    cfg: dict[str, Any] = {
        "seed": 42,
        "exp_name": "ocr_sweep",
        "model": {
            "architecture": "dbnet",
            "encoder": {
                "model_name": ENCODERS[run // 24 % len(ENCODERS)],
                "pretrained": True,
                "frozen": False,
                "out_indices": [1, 2, 3, 4],
            },
            "decoder": {"name": "unet", "inner_channels": 256, "output_channels": 64},
            "head": {"name": "db_head", "k": 50, "thresh": 0.3, "box_thresh": 0.7},
            "loss": {"name": "db_loss", "alpha": 1.0, "beta": 10.0, "ohem_ratio": 3},
        },
        "optimizer": {
            "_target_": "torch.optim.AdamW",
            "lr": LEARNING_RATES[run % len(LEARNING_RATES)],
            "weight_decay": 0.01 if run % 3 else 0.0001,
            "betas": [0.9, 0.999],
            "amsgrad": False,
        },
        "scheduler": {"name": "cosine", "warmup_epochs": 3, "min_lr": 1e-6},
        "data": {
            "root": "/data/ocr/icdar2015",
            "batch_size": BATCH_SIZES[run // len(LEARNING_RATES) % len(BATCH_SIZES)],
            "num_workers": 8,
            "image_size": [640, 640],
            "mean": [0.485, 0.456, 0.406],
        },
        "trainer": {
            "max_epochs": 100,
            "precision": "16-mixed",
            "gradient_clip_val": 5.0,
            "accumulate_grad_batches": 1,
            "deterministic": False,
        },
    }
    # The rest: augmentation and logging knobs, as long configs have them.
    extra = n_params - sum(1 for _ in _leaves(cfg))
    sections = ("augment", "callbacks", "logging", "eval")
    for i in range(max(0, extra)):
        section = cfg.setdefault(sections[i % len(sections)], {})
        group = section.setdefault(f"group{i // 20}", {})
        kinds = (i * 7, round(0.05 * (i % 13), 3), f"mode_{i % 4}", bool(i % 2))
        group[f"knob_{i}"] = kinds[i % 5] if i % 5 < 4 else (None if i % 10 == 4 else f"/p/{i}")
    return cfg


def _leaves(value: Any) -> Any:
    if isinstance(value, dict) and value:
        for item in value.values():
            yield from _leaves(item)
    else:
        yield value


def hyperparameters_block(run: int, n_params: int) -> str:
    """The YAML lines a sidecar gets: ``hyperparameters`` and the sweep's ``hydra_overrides``."""
    import yaml

    cfg = config(run, n_params)
    overrides = [
        f"optimizer.lr={cfg['optimizer']['lr']}",
        f"data.batch_size={cfg['data']['batch_size']}",
        f"model.encoder.model_name={cfg['model']['encoder']['model_name']}",
    ]
    return yaml.safe_dump(
        {"hyperparameters": cfg, "hydra_overrides": overrides}, sort_keys=False, width=1000
    )


def make_trees(work: Path, count: int, n_params: int, per_run: int) -> dict[str, Path]:
    """The plain tree and its two copies with parameters (shared per run, distinct per file)."""
    from ckpt_index.tools.demo import make_tree

    plain = work / "plain"
    paths = make_tree(plain, count, seed=0, per_experiment=per_run)
    trees = {"plain": plain, "params": work / "params", "distinct": work / "distinct"}
    blocks: dict[int, str] = {}
    for name in ("params", "distinct"):
        shutil.copytree(plain, trees[name])
    for i, ckpt in enumerate(paths):
        rel = ckpt.relative_to(plain)
        sidecar = rel.with_name(rel.name[: -len(".ckpt")] + ".metadata.yaml")
        text = (plain / sidecar).read_text(encoding="utf-8")
        text = text.replace('schema_version: "1.0"', 'schema_version: "1.1"', 1)
        text = text.replace("schema_version: '1.0'", "schema_version: '1.1'", 1)
        run = i // per_run
        if run not in blocks:
            blocks[run] = hyperparameters_block(run, n_params)
        (trees["params"] / sidecar).write_text(text + blocks[run], encoding="utf-8")
        distinct = blocks[run].replace("seed: 42", f"seed: {1000 + i}", 1)
        (trees["distinct"] / sidecar).write_text(text + distinct, encoding="utf-8")
    stamp = time.time() - HOUR_S
    for tree in trees.values():
        for dirpath, _dirs, files in os.walk(tree):
            for name in files:
                os.utime(os.path.join(dirpath, name), (stamp, stamp))
    return trees


def fresh_index(db: str) -> None:
    """Empty the index at ``db``: delete an SQLite file, or every row on another backend."""
    from sqlalchemy import delete

    from ckpt_index.index.engine import (
        is_sqlite,
        open_engine,
        resolve_db_url,
        sqlite_file,
        write_transaction,
    )
    from ckpt_index.index.tables import checkpoint_metrics, checkpoints, param_sets

    db = resolve_db_url(db)
    if is_sqlite(db):
        path = sqlite_file(db)
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    engine = open_engine(db)
    try:
        with write_transaction(engine) as conn:
            conn.execute(delete(checkpoint_metrics))
            conn.execute(delete(checkpoints))
            conn.execute(delete(param_sets))
    finally:
        engine.dispose()


def run_sync(db: str, root: Path, *, profile: bool = False) -> dict[str, Any]:
    payload = json.dumps({"db": db, "root": str(root), "profile": profile})
    proc = subprocess.run(
        [sys.executable, "-c", CHILD_SYNC, payload], capture_output=True, text=True
    )
    if proc.returncode != 0 or "@@RESULT@@" not in proc.stdout:
        raise RuntimeError(f"sync child failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    if profile:
        print(proc.stderr)
    return json.loads(proc.stdout.rsplit("@@RESULT@@", 1)[1])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10_000, help="sidecars per tree [10000]")
    parser.add_argument("--params", type=int, default=150, help="parameters per sidecar [150]")
    parser.add_argument("--per-run", type=int, default=10, help="checkpoints per run [10]")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of cold syncs [3]")
    parser.add_argument("--dir", type=Path, default=None, help="where to build the trees [tmp]")
    parser.add_argument(
        "--db", default=None, help="index URL or SQLite path [an SQLite file in the work dir]"
    )
    parser.add_argument(
        "--wipe-db", action="store_true", help="let the benchmark delete every row of --db"
    )
    parser.add_argument(
        "--profile", action="store_true", help="print a cProfile of one cold sync of each tree"
    )
    parser.add_argument("--keep", action="store_true", help="keep the trees and the index")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench_params_sync_", dir=args.dir))
    db = args.db or str(work / "index.db")
    if args.db and not args.wipe_db:
        raise SystemExit("--db: pass --wipe-db to let the benchmark delete every row of it")
    try:
        import ckpt_index

        print(
            f"python {platform.python_version()}, ckpt-index {ckpt_index.__version__}, "
            f"{os.cpu_count()} CPUs, index {db.split('://')[0] if '://' in db else 'sqlite'}"
        )
        started = time.perf_counter()
        trees = make_trees(work, args.count, args.params, args.per_run)
        runs = -(-args.count // args.per_run)
        print(
            f"trees: {args.count} sidecars each in {runs} runs of {args.per_run}; 'params' and "
            f"'distinct' with {args.params} hyperparameters each (built in "
            f"{time.perf_counter() - started:.1f} s)"
        )
        cold: dict[str, list[float]] = {name: [] for name in trees}
        warm: dict[str, list[float]] = {name: [] for name in trees}
        for i in range(args.repeat):
            for name, tree in trees.items():
                fresh_index(db)
                first = run_sync(db, tree, profile=args.profile and i == 0)
                assert first["added"] == args.count, first["line"]
                again = run_sync(db, tree)
                assert again["unchanged"] == args.count and again["parsed"] == 0, again["line"]
                cold[name].append(first["open_sync_s"])
                warm[name].append(again["open_sync_s"])
                print(
                    f"round {i + 1} {name:>8}: cold {first['open_sync_s']:.2f} s "
                    f"(CPU of the syncing process, workers apart: {first['cpu_s']:.2f} s), "
                    f"unchanged re-sync {again['open_sync_s']:.2f} s"
                )
        med = {name: statistics.median(values) for name, values in cold.items()}
        for name in trees:
            print(
                f"{name:>8}: cold median {med[name]:.2f} s (min {min(cold[name]):.2f}), "
                f"re-sync median {statistics.median(warm[name]):.2f} s"
            )
        pairs = zip(cold["params"], cold["plain"], strict=True)
        paired = statistics.median(p / q for p, q in pairs)
        print(f"params / plain: median of the rounds' ratios {paired:.2f}x")
        ratio = med["params"] / med["plain"]
        worst = med["distinct"] / med["plain"]
        print(f"worst case (every sidecar its own set): {worst:.2f}x plain")
        verdict = "PASS" if ratio <= TARGET_RATIO else "FAIL"
        print(
            f"target: cold sync with {args.params} parameters <= {TARGET_RATIO}x without: "
            f"{verdict} ({ratio:.2f}x)"
        )
        if args.keep:
            print(f"kept: {work}")
        return 0 if verdict == "PASS" else 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
