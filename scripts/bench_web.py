#!/usr/bin/env python
"""Benchmark ``ckpt-index serve`` against the targets of issue 12 on a synthetic index.

Writes N seed-shaped checkpoints (``ckpt_index.tools.demo.make_tree``, 200 per experiment),
syncs them with ``ckpt-index sync``, starts ``ckpt-index serve`` on a free port and times, over
loopback HTTP (so a little more than the server's own time): the start until the server answers,
its first Checkpoints page (the total and facets counted, nothing cached), the Checkpoints page
(default order, sorted by hmean, filtered by ``--where``, a deep page) and its JSON, the other
pages (Health, Compare and its curves, Experiment, Checkpoint) and the live poll. It reports the
median and the minimum of ``--repeat`` runs (the total and facet counts are then cached while the
index is unchanged), the first request of each (nothing cached), and the server's peak RSS
(VmHWM). Exit status 1 when a target is missed.

    python scripts/bench_web.py --n 100000
    python scripts/bench_web.py --n 10000 --db postgresql+psycopg://u@host/scratch
    python scripts/bench_web.py --reuse --db postgresql+psycopg://u@host/scratch  # no new sync
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

#: key -> (label, path and query string, bound in ms, N from which the target applies)
PAGES: dict[str, tuple[str, str, float | None]] = {
    "page_ms": ("Checkpoints page", "checkpoints", 150.0),
    "sorted_ms": ("page sorted by hmean", "checkpoints?sort=hmean:desc", 150.0),
    "filtered_ms": (
        "filtered page (--where)",
        "checkpoints?" + urlencode({"where": "hmean > 0.8 and encoder = 'resnet50'"}),
        100.0,
    ),
    "json_ms": ("/api/checkpoints", "api/checkpoints", None),
    # A filter no earlier request used: its first request scans for the total and the facets.
    "new_filter_ms": ("page of a new filter (min_epoch)", "checkpoints?min_epoch=1", None),
    "deep_page_ms": ("page 1000 (offset 49,950)", "checkpoints?page=1000", None),
    # What a live page polls every 2 s (on SQLite read again only after a write).
    "version_ms": ("/api/version (live poll)", "api/version", None),
    "health_ms": ("Health page", "health", None),
    # The two best checkpoints by hmean (their paths are looked up when the server is up).
    "compare_ms": ("Compare page (2 checkpoints)", "compare", None),
    # What the Compare page's chart fetches: both experiments' curves (200 checkpoints each).
    "curves_ms": ("/api/compare/curves (2 exps)", "api/compare/curves", None),
    # The experiment of the best checkpoint (200 checkpoints) and that checkpoint's page.
    "experiment_ms": ("Experiment page (200 checkpoints)", "experiments", 100.0),
    "checkpoint_ms": ("Checkpoint page", "checkpoint", None),
}
TARGET_N = 100_000
#: The Checkpoints page's bound holds for the server's very first page too (nothing cached).
FIRST_PAGE_MS = 150.0
READY_S = 1.0
RSS_MB = 200.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=TARGET_N, help="checkpoints to index")
    parser.add_argument("--repeat", type=int, default=7, help="timed requests per page")
    parser.add_argument("--db", help="index URL (default: a SQLite file in a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="time the index at --db (or --workdir's index.db) as it is: no tree, no sync",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="keep the tree and index here (reused when its index.db exists): deleting 100,000 "
        "files takes minutes",
    )
    return parser


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "ckpt_index", *args]


def make_index(n: int, base: Path, db: str) -> float:
    from ckpt_index.tools.demo import make_tree

    root = base / "outputs"
    make_tree(root, n, per_experiment=200)
    start = time.perf_counter()
    subprocess.run(cli("sync", str(root), "--db", db), check=True, capture_output=True)
    return time.perf_counter() - start


def fetch(url: str) -> tuple[float, int]:
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(url) as reply:
            body = reply.read()
    except urllib.error.HTTPError as exc:  # a 400 page is still a page
        body = exc.read()
    return time.perf_counter() - start, len(body)


def compare_path(address: str, base: str) -> str:
    """``base`` (the Compare page or its curves) for the best checkpoints of the two best
    experiments by hmean."""
    query = "api/checkpoints?per_page=2&sort=hmean:desc&best_by=hmean&group_by=exp_name"
    with urllib.request.urlopen(address + query) as reply:
        paths = [r["checkpoint_path"] for r in json.load(reply)["checkpoints"]]
    return base + "?" + urlencode([("path", p) for p in paths])


def best_pages(address: str) -> dict[str, str]:
    """The Experiment page of the best checkpoint by hmean, and that checkpoint's page."""
    from ckpt_index.web.checkpoint import checkpoint_link
    from ckpt_index.web.experiment import experiment_link

    with urllib.request.urlopen(address + "api/checkpoints?per_page=1&sort=hmean:desc") as reply:
        best = json.load(reply)["checkpoints"][0]
    return {
        "experiment_ms": experiment_link(best["exp_name"], "experiments/"),
        "checkpoint_ms": checkpoint_link(best["checkpoint_path"], "checkpoint"),
    }


def peak_rss_mb(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(r"VmHWM:\s+(\d+) kB", status)
    return int(found.group(1)) / 1024 if found else None


def serve_and_time(db: str, repeat: int, base: Path) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    start = time.perf_counter()
    server = subprocess.Popen(
        cli("serve", "--db", db, "--port", "0"),
        cwd=base,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        found = re.search(r"at (http://\S+/)", line)
        if not found:
            raise SystemExit(
                f"serve did not start: {line}{server.stderr.read() if server.stderr else ''}"
            )
        address = found.group(1)
        fetch(address + "static/favicon.svg")  # answered once the server has started
        figures["ready_s"] = time.perf_counter() - start
        # The first page: the total and facets counted, nothing cached.
        figures["first_page_ms"] = fetch(address + "checkpoints")[0] * 1000
        for key, (_, path, _) in PAGES.items():
            if key in ("compare_ms", "curves_ms"):
                path = compare_path(address, path)
            if key in ("experiment_ms", "checkpoint_ms"):
                path = best_pages(address)[key]
            if key == "deep_page_ms":
                figures["peak_rss_mb_before_deep"] = peak_rss_mb(server.pid)
            figures[key + "_first"] = fetch(address + path)[0] * 1000  # cold: nothing cached
            samples = [fetch(address + path)[0] * 1000 for _ in range(repeat)]
            figures[key] = statistics.median(samples)
            figures[key + "_min"] = min(samples)
        figures["peak_rss_mb"] = peak_rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return figures


def verdicts(n: int, figures: dict[str, Any]) -> list[tuple[str, float | None, str, bool | None]]:
    """(label, value, bound text, met) for every figure; targets apply at 100,000 and above."""
    rows: list[tuple[str, float | None, str, bool | None]] = []
    applies = n >= TARGET_N
    ready = figures["ready_s"]
    rows.append(
        (
            "ready (start to first answer)",
            ready * 1000,
            f"<= {READY_S * 1000:.0f} ms",
            ready <= READY_S,
        )
    )
    first = figures["first_page_ms"]
    met_first = None if not applies else first <= FIRST_PAGE_MS
    rows.append(
        ("first Checkpoints page (uncached)", first, f"<= {FIRST_PAGE_MS:.0f} ms", met_first)
    )
    for key, (label, _, bound) in PAGES.items():
        value = figures[key]
        met = None if bound is None or not applies else value <= bound
        rows.append((label, value, f"<= {bound:.0f} ms" if bound else "-", met))
    rss = figures["peak_rss_mb"]
    met = None if rss is None or not applies else rss <= RSS_MB
    rows.append(("server peak RSS (MB)", rss, f"<= {RSS_MB:.0f} MB", met))
    return rows


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        return report(args, measure(args, args.workdir))
    with tempfile.TemporaryDirectory(prefix="bench_web_") as tmp:
        return report(args, measure(args, Path(tmp)))


def measure(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    db = args.db or str(base / "index.db")
    backend = db.split("://")[0] if "://" in db else "sqlite"
    if args.reuse or (args.db is None and (base / "index.db").exists()):
        print(f"reusing {db}", flush=True)
    else:
        sync_s = make_index(args.n, base, db)
        print(f"indexed {args.n} checkpoints in {sync_s:.1f} s ({backend})", flush=True)
    return serve_and_time(db, args.repeat, base)


def report(args: argparse.Namespace, figures: dict[str, Any]) -> int:
    rows = verdicts(args.n, figures)
    print(f"{'figure (ms)':<32}{'median':>10}{'min':>10}{'first':>10}  target")
    keys = ["ready_s", "first_page", *PAGES, "peak_rss_mb"]
    for key, (label, value, bound, met) in zip(keys, rows, strict=True):
        low = figures.get(key + "_min")
        shown = "-" if value is None else f"{value:.1f}"
        first = figures.get(key + "_first")
        verdict = "" if met is None else (" met" if met else " MISSED")
        print(
            f"{label:<32}{shown:>10}{'' if low is None else f'{low:.1f}':>10}"
            f"{'' if first is None else f'{first:.1f}':>10}  {bound}{verdict}"
        )
    before = figures.get("peak_rss_mb_before_deep")
    if before is not None:
        print(f"(peak RSS before the deep page: {before:.1f} MB)")
    if args.n < TARGET_N:
        print(f"(the page targets apply from {TARGET_N:,} checkpoints)")
    if args.json:
        args.json.write_text(json.dumps({"n": args.n, **figures}, indent=2))
    missed = [label for label, _, _, met in rows if met is False]
    print("every target met" if not missed else f"target missed: {', '.join(missed)}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
