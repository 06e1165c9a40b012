"""SIGKILL during `ckpt-index gc --apply` (and with --trash), at random moments: nothing the
policy keeps is lost, the next `sync` equals a fresh sync of what is on disk, and the next
`gc --apply` finishes the interrupted deletion and then has nothing left to do.

The apply runs in a real subprocess (``python -u -m ckpt_index``) over a tree large enough that
the kill lands mid-apply: the test reads the child's "deleted" lines as they come and kills it
after a random number of them plus a random fraction of a deletion's time, so kills fall between
and inside the steps (marker, checkpoint, sidecar, row). Both backends; several seeds.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.gc_trees import age_tree, make_run
from helpers.index_rows import content, sync, wipe

from ckpt_index import plan_gc
from ckpt_index.sidecar.files import CKPT_SUFFIX, SIDECAR_SUFFIX
from ckpt_index.tools.gc_apply import GC_MARKER_SUFFIX

POLICY = ("--keep-best", "1", "--by", "val/hmean")
EXPERIMENTS, RUNS, EPOCHS = 4, 3, 16  # 192 checkpoints, about 170 of them deleted


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """The tree, written once for the module (each test copies it)."""
    root = tmp_path_factory.mktemp("template") / "outputs"
    rng = random.Random(13)
    for e in range(EXPERIMENTS):
        for r in range(RUNS):
            make_run(root, f"exp{e}", f"run{r}", [round(rng.random(), 4) for _ in range(EPOCHS)])
    return root


def files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink()
    }


def gc_apply_killed(db: str, outputs: Path, trash: Path | None, rng: random.Random) -> int:
    """Run gc --apply in a child and SIGKILL it mid-apply; return how many lines it printed."""
    command = [sys.executable, "-u", "-m", "ckpt_index", "gc", str(outputs), *POLICY, "--apply"]
    command += ["--db", db] + (["--trash", str(trash)] if trash else [])
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout is not None
    wanted, seen = rng.randrange(1, 60), 0
    started = time.monotonic()
    for line in child.stdout:
        if line.startswith(("deleted ", "trashed ")):
            seen += 1
            if seen == 1:
                started = time.monotonic()
            if seen >= wanted:
                # A random point within the next deletion (they take about the same time).
                time.sleep(rng.random() * (time.monotonic() - started) / seen)
                break
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL, "gc finished before the kill: use a larger tree"
    child.stdout.close()
    assert child.stderr is not None
    child.stderr.close()
    return seen


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_sigkill_mid_apply_loses_nothing_kept_and_the_next_run_finishes(
    template, tmp_path, db_url, invoke_db, seed
):
    rng = random.Random(seed)
    trash = tmp_path / "trash" if seed % 2 else None
    outputs = tmp_path / "outputs"
    shutil.copytree(template, outputs)
    age_tree(outputs)
    sync(outputs, db_url)
    before = files(outputs)
    plan = plan_gc(outputs, db=db_url, keep_best=1, by="val/hmean")
    kept = {i.checkpoint_path for i in plan.kept}
    doomed = {i.checkpoint_path for i in plan.deletions}
    assert len(doomed) > 100 and kept

    printed = gc_apply_killed(db_url, outputs, trash, rng)
    assert 0 < printed < len(doomed)

    # Nothing kept is touched; what is gone is only what the plan deletes.
    assert all(os.path.exists(path) for path in kept)
    now = files(outputs)
    gone = {str(outputs / rel) for rel in set(before) - set(now)}
    for path in gone:
        # A checkpoint goes first, then its sidecar: a gone sidecar's checkpoint is gone too.
        ckpt = path.removesuffix(SIDECAR_SUFFIX) + CKPT_SUFFIX
        assert (path if path.endswith(CKPT_SUFFIX) else ckpt) in doomed
        assert not os.path.exists(ckpt if path.endswith(SIDECAR_SUFFIX) else path)
    assert all(now[rel] == before[rel] for rel in now if rel in before)

    # The next sync equals a fresh sync of the disk into a new index.
    sync(outputs, db_url)
    fresh = "sqlite:///" + str(tmp_path / "fresh.db")
    sync(outputs, fresh)
    assert content(db_url) == content(fresh)
    wipe(fresh)

    # The next gc --apply finishes the interrupted deletion and the rest of the plan.
    args = ["gc", str(outputs), *POLICY, "--apply"] + (["--trash", str(trash)] if trash else [])
    finished = invoke_db(*args)
    assert finished.exit_code == 0, finished.output
    remaining = files(outputs)
    assert {str(outputs / rel) for rel in remaining if rel.endswith(CKPT_SUFFIX)} == kept
    assert not [rel for rel in remaining if rel.endswith(GC_MARKER_SUFFIX)]
    orphans = [
        rel
        for rel in remaining
        if rel.endswith(SIDECAR_SUFFIX)
        and rel.removesuffix(SIDECAR_SUFFIX) + CKPT_SUFFIX not in remaining
    ]
    assert orphans == []
    if trash is not None:
        # Every deleted file is in the trash, byte for byte, at its place; nothing else is.
        trashed = {
            rel: data for rel, data in files(trash / "outputs").items() if not rel.startswith(".")
        }
        assert trashed == {rel: data for rel, data in before.items() if rel not in remaining}

    # A second gc --apply with the same policy deletes nothing more.
    again = invoke_db(*args, "--format", "json")
    assert again.exit_code == 0, again.output
    assert '"deleted": []' in again.output and '"finished": []' in again.output
    assert files(outputs) == remaining
    sync(outputs, db_url)
    sync(outputs, fresh)
    assert content(db_url) == content(fresh)
    wipe(fresh)
