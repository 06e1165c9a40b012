"""Concurrency on both backends (issue 4): processes upserting through the training callback's code
path while ``ckpt-index sync`` walks the same tree.

Each writer process saves checkpoints into its own folder the way the callback does (checkpoint
file, then its sidecar, then an upsert of ``record_from_metadata`` rows with ``upsert_records``
inside ``run_write``, a few checkpoints per transaction, on an engine opened as the callback's
writer opens it), while two syncs of the whole tree run. Afterwards: every process exited 0 and
reported no exception (on SQLite, "database is locked" must have been waited out or retried, never
surfaced), no row is lost or duplicated, and the index equals a fresh sync of the final tree.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers.checkpoints import write_checkpoint
from helpers.sidecars import DATA, seed_document
from sqlalchemy import create_engine, func, select
from sqlalchemy.pool import NullPool

from ckpt_index.index.tables import checkpoint_metrics, checkpoints

#: Columns that say when or from which file state a row was built, not what it says: a row built
#: inside the racy window stores NULL mtimes, and ids depend on who inserted first.
NOT_CONTENT = {"id", "indexed_at", "ckpt_mtime_ns", "sidecar_mtime_ns"}

WRITER = r"""
import itertools, json, os, sys, time, traceback
from pathlib import Path

args = json.loads(sys.argv[1])
errors, transactions = [], 0
try:
    import yaml
    from ckpt_index.index.engine import open_engine, run_write
    from ckpt_index.index.records import FileState, record_from_metadata
    from ckpt_index.sidecar.schema import CheckpointMetadataV1, metadata_warnings
    from ckpt_index.sidecar.files import save_metadata
    from ckpt_index.index.store import upsert_records

    def tiny_checkpoint(tag):  # as helpers.checkpoints: a sync checks checkpoints are archives
        import io, pickle, zipfile
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("archive/data.pkl", pickle.dumps({"epoch": 0, "tag": tag}, protocol=2))
        return buffer.getvalue()

    k, n = args["k"], args["n"]
    document = yaml.safe_load(Path(args["seed"]).read_text())
    busy_ms = int(args["busy_timeout"] * 1000)
    # As the callback's IndexWriter opens it: its busy timeout on every SQLite connection.
    engine = open_engine(
        args["db"], on_connect=lambda c: c.execute(f"PRAGMA busy_timeout = {busy_ms}")
    )
    folder = Path(args["root"]) / f"writer{k}" / "checkpoints"
    folder.mkdir(parents=True)
    sizes = itertools.cycle((1, 3, 2, 4))
    done = 0
    while done < n:
        pending = []
        for j in range(done, min(n, done + next(sizes))):
            ckpt = folder / f"epoch-{j:04d}_step-{j * 10:06d}.ckpt"
            ckpt.write_bytes(tiny_checkpoint(f"{k} {j}"))  # the checkpoint first, as Lightning
            document.update(checkpoint_path=str(ckpt), exp_name=f"writer{k}")
            document["training"].update(epoch=j, global_step=j * 10)
            document["metrics"].update(
                hmean=((k * 7919 + j * 104729) % 1000) / 1000,
                additional_metrics={"val/loss": j / (n + 1), f"writer{k}/score": float(j)})
            meta = CheckpointMetadataV1.model_validate(document)
            sidecar = save_metadata(meta, ckpt, force=True, durable=False)  # then its sidecar
            c, s = os.stat(ckpt), os.stat(sidecar)
            pending.append((meta, str(ckpt), str(sidecar), FileState(c.st_size, c.st_mtime_ns),
                            FileState(s.st_size, s.st_mtime_ns)))

        def work(conn, pending=pending):
            records = [record_from_metadata(meta, checkpoint_path=p, sidecar_path=sp, ckpt=cs,
                                            sidecar=ss, warnings=metadata_warnings(meta))
                       for meta, p, sp, cs, ss in pending]
            upsert_records(conn, records)

        run_write(engine, work, attempts=3)  # the IndexWriter's retries
        transactions += 1
        done += len(pending)
        if done >= min(n, 8):
            (Path(args["rendezvous"]) / f"started-{k}").touch()
    engine.dispose()
except BaseException:
    errors.append(traceback.format_exc())
print(json.dumps({"errors": errors, "transactions": transactions}))
sys.exit(1 if errors else 0)
"""


# ------------------------------------------------------------------------------------ helpers
def index_content(url: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Content of every row keyed by (location, path), metrics included; duplicates fail."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            found: dict[tuple[str, str], dict[str, Any]] = {}
            ids: dict[int, tuple[str, str]] = {}
            for row in conn.execute(select(checkpoints)).mappings():
                key = (row["location"], row["checkpoint_path"])
                assert key not in found, f"duplicated row {key}"
                found[key] = {k: v for k, v in row.items() if k not in NOT_CONTENT}
                found[key]["metrics"] = {}
                ids[row["id"]] = key
            for checkpoint_id, name, value in conn.execute(select(checkpoint_metrics)):
                assert checkpoint_id in ids, "a metric row points at no checkpoint"
                found[ids[checkpoint_id]]["metrics"][name] = value
    finally:
        engine.dispose()
    return found


def _short(value: Any) -> Any:
    text = repr(value)
    return value if len(text) <= 60 else text[:57] + "..."


def count_rows(url: str) -> tuple[int, int]:
    """(rows, distinct (location, path)) in the index."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            total = conn.scalar(select(func.count()).select_from(checkpoints))
            keys = (
                select(checkpoints.c.location, checkpoints.c.checkpoint_path).distinct().subquery()
            )
            distinct = conn.scalar(select(func.count()).select_from(keys))
    finally:
        engine.dispose()
    return total, distinct


def existing_tree(root: Path) -> int:
    """What the tree holds before the writers start: sidecars, a checkpoint without a sidecar, an
    orphaned sidecar and an invalid one. Returns the number of rows a sync makes of it."""
    for i in range(12):
        write_checkpoint(
            root / "old" / "checkpoints" / f"epoch-{i:02d}_step-{i:06d}.ckpt",
            seed_document(),
            **{"metrics.hmean": i / 20, "training.epoch": i},
        )
    write_checkpoint(root / "old" / "checkpoints" / "bare.ckpt")
    write_checkpoint(root / "old" / "checkpoints" / "orphan.ckpt", seed_document(), ckpt_file=False)
    write_checkpoint(
        root / "old" / "checkpoints" / "invalid.ckpt", seed_document(), **{"metrics.hmean": 1.5}
    )
    return 15


def start_sync(db_url: str, root: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ckpt_index", "sync", str(root), "--db", db_url, "--format", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_concurrently(db_url: str, tmp_path: Path, processes: int, per_process: int) -> None:
    root = tmp_path / "outputs"
    root.mkdir()
    existing = existing_tree(root)
    rendezvous = tmp_path / "rendezvous"
    rendezvous.mkdir()
    from ckpt_index.index.engine import open_engine

    open_engine(db_url).dispose()  # created up front: this test is about writing, not migrating

    writers = [start_writer(db_url, root, rendezvous, k, per_process) for k in range(processes)]
    deadline = time.monotonic() + 120
    while len(list(rendezvous.iterdir())) < processes and time.monotonic() < deadline:
        if any(w.poll() not in (None, 0) for w in writers):
            break
        time.sleep(0.01)
    # Two syncs of the whole tree while the writers write: one now, one a moment later.
    syncs = [start_sync(db_url, root)]
    time.sleep(0.2)
    syncs.append(start_sync(db_url, root))
    writers_still_running = sum(w.poll() is None for w in writers)
    check_reports(writers, syncs)
    assert writers_still_running, "the syncs did not overlap the writers; nothing was tested"

    # No lost or duplicated rows.
    expected = processes * per_process + existing
    assert count_rows(db_url) == (expected, expected)
    final = index_content(db_url)
    written = {path for _, path in final if "/writer" in path}
    assert written == {
        str(root / f"writer{k}" / "checkpoints" / f"epoch-{j:04d}_step-{j * 10:06d}.ckpt")
        for k in range(processes)
        for j in range(per_process)
    }
    check_equals_fresh_sync(final, root, tmp_path / "fresh.db")


def start_writer(
    db_url: str, root: Path, rendezvous: Path, k: int, per_process: int
) -> subprocess.Popen:
    args = {
        "db": db_url,
        "root": str(root),
        "k": k,
        "n": per_process,
        "seed": str(DATA / "seed_callback.metadata.yaml"),
        "busy_timeout": 5.0,
        "rendezvous": str(rendezvous),
    }
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, json.dumps(args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def check_reports(writers: list[subprocess.Popen], syncs: list[subprocess.Popen]) -> None:
    """Every process exited 0, with no traceback, no "locked" and no error reported."""
    reports = []
    for k, writer in enumerate(writers):
        out, err = writer.communicate(timeout=600)
        reports.append((f"writer{k}", writer.returncode, out, err))
    for i, sync in enumerate(syncs):
        out, err = sync.communicate(timeout=600)
        reports.append((f"sync{i}", sync.returncode, out, err))

    failed = [
        (name, code, out[-2000:], err[-4000:])
        for name, code, out, err in reports
        if code != 0 or "Traceback" in err or "locked" in (out + err).lower()
    ]
    assert not failed, failed
    for name, _, out, _ in reports:
        if name.startswith("writer"):
            assert json.loads(out)["errors"] == [], (name, out)


def check_equals_fresh_sync(final: dict, root: Path, fresh_db: Path) -> None:
    """The index equals a fresh sync of the final tree into a new database."""
    fresh = "sqlite:///" + str(fresh_db)
    result = subprocess.run(
        [sys.executable, "-m", "ckpt_index", "sync", str(root), "--db", fresh],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    reference = index_content(fresh)
    assert set(final) == set(reference)
    differing = {
        path: {
            col: (_short(final[(loc, path)][col]), _short(want[col]))
            for col in want
            if final[(loc, path)][col] != want[col]
        }
        for (loc, path), want in reference.items()
        if final[(loc, path)] != want
    }
    assert not differing, f"{len(differing)} rows differ from a fresh sync (index, fresh): " + repr(
        dict(list(differing.items())[:3])
    )


# --------------------------------------------------------------------------------------------


def test_writers_and_syncs_at_once_small(db_url: str, tmp_path: Path) -> None:
    run_concurrently(db_url, tmp_path, processes=4, per_process=100)


@pytest.mark.slow
def test_eight_writers_of_a_thousand_and_two_syncs(db_url: str, tmp_path: Path) -> None:
    run_concurrently(db_url, tmp_path, processes=8, per_process=1000)
