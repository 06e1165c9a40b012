"""One file's failure is that file's status: refused rows, unlistable directories, broken
checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers.checkpoints import tiny_checkpoint, write_checkpoint
from helpers.files import age
from helpers.index_rows import raw_rows, sync
from helpers.sidecars import seed_document

import ckpt_index.sync.roots as sync_module
from ckpt_index.index import store


def make_tree(outputs: Path, n: int, runs: int = 3) -> list[Path]:
    ckpts = []
    for i in range(n):
        ckpt = outputs / f"run{i % runs}" / "checkpoints" / f"epoch-{i:02d}_step-{i * 10:06d}.ckpt"
        write_checkpoint(
            ckpt, seed_document(), **{"training.epoch": i, "metrics.hmean": i / (n + 1)}
        )
        ckpts.append(ckpt)
    age(outputs)
    return ckpts


# ---------------------------------------------------------------- a row the database refuses
def test_a_refused_row_is_stored_invalid_and_the_rest_of_its_batch_lands(
    outputs: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpts = make_tree(outputs, 40)
    poisoned = str(ckpts[17])
    real = store.upsert_records
    calls = []

    def refusing(conn, records, **kwargs):
        calls.append(len(records))
        # Only the full rows are refused: the minimal invalid row that replaces it is stored.
        if any(
            r.checkpoint_path == poisoned and r.columns.get("status") == "valid" for r in records
        ):
            raise ValueError("value out of range for the database")
        return real(conn, records, **kwargs)

    monkeypatch.setattr(store, "upsert_records", refusing)
    monkeypatch.setattr(sync_module, "BATCH_SIZE", 16)
    summary = sync(outputs, db_url)
    rows = raw_rows(db_url)
    assert len(rows) == 40
    bad = rows[poisoned]
    assert bad["status"] == "invalid"
    assert bad["error"] == "cannot be stored: value out of range for the database"
    assert all(r["status"] == "valid" for p, r in rows.items() if p != poisoned)
    assert (summary.valid, summary.invalid) == (39, 1)
    assert (poisoned[: -len(".ckpt")] + ".metadata.yaml", bad["error"]) in summary.invalid_files
    # Halving found the row in a few writes, not one per row.
    assert len(calls) < 40


def test_a_database_that_refuses_everything_fails_the_sync(
    outputs: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tree(outputs, 5)

    def broken(conn, records, **kwargs):
        raise ValueError("disk full")

    monkeypatch.setattr(store, "upsert_records", broken)
    with pytest.raises(ValueError, match="disk full"):
        sync(outputs, db_url)


# --------------------------------------------------------------- directories that cannot be listed
def test_an_unlistable_directory_keeps_its_rows_flagged(
    outputs: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpts = make_tree(outputs, 30, runs=3)
    assert sync(outputs, db_url).added == 30
    blocked = str(outputs / "run1" / "checkpoints")
    real = os.scandir

    def scandir(path):
        if os.fspath(path) == blocked:
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(sync_module.os, "scandir", scandir)
    summary = sync(outputs, db_url)
    assert summary.removed == 0 and summary.kept == 10
    assert summary.unlisted_dirs == [(blocked, f"cannot list {blocked}: Permission denied")]
    assert "1 directories could not be listed (10 rows kept as they were)" in summary.one_line()
    rows = raw_rows(db_url)
    assert len(rows) == 30
    for ckpt in ckpts:
        expected = (
            f"cannot list {blocked}: Permission denied" if str(ckpt).startswith(blocked) else None
        )
        assert rows[str(ckpt)]["scan_error"] == expected
        assert rows[str(ckpt)]["status"] == "valid"

    # Listable again: the flag goes, nothing was lost.
    monkeypatch.setattr(sync_module.os, "scandir", real)
    again = sync(outputs, db_url)
    assert again.updated == 10 and again.removed == 0
    assert all(r["scan_error"] is None for r in raw_rows(db_url).values())


def test_a_deleted_directory_is_still_pruned(outputs: Path, db_url: str) -> None:
    import shutil

    make_tree(outputs, 9, runs=3)
    sync(outputs, db_url)
    shutil.rmtree(outputs / "run2")
    assert sync(outputs, db_url).removed == 3


# --------------------------------------------------------------- broken checkpoints, stale sidecars
def test_a_truncated_checkpoint_under_a_valid_sidecar_is_unreadable_and_not_an_answer(
    outputs: Path, db_url: str, invoke_db
) -> None:
    ckpts = make_tree(outputs, 3)
    best = ckpts[2]  # the highest hmean
    data = best.read_bytes()
    best.write_bytes(data[: len(data) // 2])
    age(best)
    summary = sync(outputs, db_url)
    row = raw_rows(db_url)[str(best)]
    assert row["status"] == "unreadable" and row["error"]
    assert row["hmean"] == pytest.approx(2 / 4), "the sidecar's metadata is kept"
    assert summary.unreadable == 1 and summary.valid == 2
    result = invoke_db("query", "--best-by", "hmean", "--format", "paths")
    assert result.exit_code == 0 and result.output.strip() == str(ckpts[1])
    # Repaired, it is the answer again.
    best.write_bytes(data)
    age(best)
    sync(outputs, db_url)
    assert raw_rows(db_url)[str(best)]["status"] == "valid"
    result = invoke_db("query", "--best-by", "hmean", "--format", "paths")
    assert result.output.strip() == str(best)


def test_a_checkpoint_replaced_after_its_sidecar_is_flagged_stale(
    outputs: Path, db_url: str
) -> None:
    ckpts = make_tree(outputs, 2)
    sync(outputs, db_url)
    assert [raw_rows(db_url)[str(c)]["stale"] for c in ckpts] == [False, False]
    replaced = ckpts[0]
    replaced.write_bytes(tiny_checkpoint("retrained"))  # now newer than its sidecar by an hour
    summary = sync(outputs, db_url)
    assert summary.updated == 1
    rows = raw_rows(db_url)
    assert rows[str(replaced)]["stale"] is True or rows[str(replaced)]["stale"] == 1
    assert not rows[str(ckpts[1])]["stale"]


def test_a_sidecar_written_just_after_its_checkpoint_is_not_stale(
    outputs: Path, db_url: str
) -> None:
    ckpt = outputs / "run" / "checkpoints" / "last.ckpt"
    write_checkpoint(ckpt, seed_document())
    st = ckpt.stat()
    # The callback writes the sidecar a few milliseconds after the checkpoint.
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns - 3_000_000))
    age(outputs)
    sync(outputs, db_url)
    assert not raw_rows(db_url)[str(ckpt)]["stale"]


def test_full_sync_reads_every_file_again(outputs: Path, db_url: str) -> None:
    make_tree(outputs, 4)
    sync(outputs, db_url)
    assert sync(outputs, db_url).parsed == 0
    assert sync(outputs, db_url, full=True).parsed == 4
