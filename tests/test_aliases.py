"""One checkpoint, one row: symbolic and hard links are aliases of the file they point to, a
``last.ckpt`` copy is marked ``is_last`` and loses ties, links that cannot be aliases (dangling,
out of the root, cycles) are reported and not indexed. Sync and the training callback agree."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from helpers.checkpoints import tiny_checkpoint, write_checkpoint
from helpers.index_rows import raw_rows, sync
from helpers.sidecars import seed_document
from sqlalchemy import text

from ckpt_index.index.engine import open_engine, write_transaction
from ckpt_index.sidecar.files import sidecar_path_for
from ckpt_index.sync.scan import FINGERPRINT_BYTES, scan


def run_tree(outputs: Path) -> Path:
    """A run folder as UniqueModelCheckpoint leaves it: two epoch files, a best-* symlink to the
    best, a hard-linked copy of it, and last.ckpt saved as a byte copy of the last epoch."""
    ckpts = outputs / "exp" / "checkpoints"
    write_checkpoint(ckpts / "epoch-02_step-000020.ckpt", seed_document(), **{"metrics.hmean": 0.8})
    (ckpts / "epoch-02_step-000020.ckpt").write_bytes(tiny_checkpoint("epoch 2"))
    best = write_checkpoint(
        ckpts / "epoch-03_step-000032.ckpt",
        seed_document(),
        **{"metrics.hmean": 0.9061, "training.epoch": 3, "training.global_step": 32},
    )
    best.write_bytes(tiny_checkpoint("epoch 3"))
    os.symlink(best.name, ckpts / "best-hmean-0.9061.ckpt")
    shutil.copy(sidecar_path_for(best), sidecar_path_for(ckpts / "best-hmean-0.9061.ckpt"))
    os.link(best, ckpts / "hard.ckpt")
    shutil.copy(best, ckpts / "last.ckpt")
    shutil.copy(sidecar_path_for(best), sidecar_path_for(ckpts / "last.ckpt"))
    return ckpts


def test_links_are_aliases_and_the_copy_is_last(outputs: Path, db_url: str, invoke_db) -> None:
    ckpts = run_tree(outputs)
    result = invoke_db("sync", str(outputs), "--format", "json", "--no-infer")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["checkpoints"], summary["aliases"], summary["orphaned"]) == (3, 2, 0)
    assert summary["dangling_links"] == []

    rows = raw_rows(db_url)
    best = str(ckpts / "epoch-03_step-000032.ckpt")
    assert set(rows) == {best, str(ckpts / "epoch-02_step-000020.ckpt"), str(ckpts / "last.ckpt")}
    assert json.loads(rows[best]["aliases"]) == [
        str(ckpts / "best-hmean-0.9061.ckpt"),
        str(ckpts / "hard.ckpt"),
    ]
    assert [bool(rows[p]["is_last"]) for p in sorted(rows)] == [False, False, True]

    # The best checkpoint is the real file (last.ckpt ties with it and loses), with its aliases.
    result = invoke_db("query", "--best-by", "hmean", "--format", "paths")
    assert result.stdout.strip() == best
    result = invoke_db("query", "--best-by", "hmean", "--format", "json")
    (record,) = json.loads(result.stdout)
    assert record["aliases"] == [str(ckpts / "best-hmean-0.9061.ckpt"), str(ckpts / "hard.ckpt")]
    assert record["is_last"] is False
    (last,) = json.loads(invoke_db("query", "--where", "is_last = 1", "--format", "json").stdout)
    assert last["checkpoint_path"] == str(ckpts / "last.ckpt") and last["aliases"] == []
    # The table lists the aliases by name; CSV carries the list as JSON, not as Python's repr.
    table = invoke_db("query", "--best-by", "hmean", "--columns", "aliases").stdout
    shown = "outputs/exp/checkpoints/best-hmean-0.9061.ckpt, outputs/exp/checkpoints/hard.ckpt"
    assert table.splitlines()[1].strip() == shown  # relative to the current directory
    result = invoke_db(
        "query", "--best-by", "hmean", "--format", "csv", "--columns", "path,aliases"
    )
    assert (
        result.stdout.splitlines()[1]
        == best
        + ","
        + '"'
        + json.dumps([str(ckpts / "best-hmean-0.9061.ckpt"), str(ckpts / "hard.ckpt")]).replace(
            '"', '""'
        )
        + '"'
    )


def test_alias_changes_reach_unchanged_rows(outputs: Path, db_url: str) -> None:
    ckpts = run_tree(outputs)
    sync(outputs, db_url)
    best = str(ckpts / "epoch-03_step-000032.ckpt")
    (ckpts / "hard.ckpt").unlink()
    os.unlink(ckpts / "best-hmean-0.9061.ckpt")
    sidecar_path_for(ckpts / "best-hmean-0.9061.ckpt").unlink()
    os.symlink("epoch-02_step-000020.ckpt", ckpts / "best-hmean-0.8000.ckpt")
    # last.ckpt now holds a later state: no longer a copy.
    (ckpts / "last.ckpt").write_bytes(tiny_checkpoint("epoch 4, a later state"))
    summary = sync(outputs, db_url)
    assert summary.added == 0 and summary.removed == 0
    rows = raw_rows(db_url)
    assert rows[best]["aliases"] is None
    assert json.loads(rows[str(ckpts / "epoch-02_step-000020.ckpt")]["aliases"]) == [
        str(ckpts / "best-hmean-0.8000.ckpt")
    ]
    assert not rows[str(ckpts / "last.ckpt")]["is_last"]


def test_dangling_outside_and_cyclic_links_are_reported(
    tmp_path: Path, outputs: Path, db_url: str, invoke_db
) -> None:
    ckpts = outputs / "exp" / "checkpoints"
    write_checkpoint(ckpts / "epoch-01_step-000010.ckpt", seed_document())
    secret = tmp_path / "elsewhere" / "secret.ckpt"
    secret.parent.mkdir()
    secret.write_bytes(tiny_checkpoint("outside"))
    os.symlink(secret, ckpts / "outside.ckpt")
    os.symlink("gone.ckpt", ckpts / "dangling.ckpt")
    os.symlink("loop-b.ckpt", ckpts / "loop-a.ckpt")
    os.symlink("loop-a.ckpt", ckpts / "loop-b.ckpt")
    (ckpts / "notes.txt").write_text("not a checkpoint")
    os.symlink("notes.txt", ckpts / "notes.ckpt")

    result = invoke_db("sync", str(outputs), "--format", "json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    reasons = {Path(d["path"]).name: d["reason"] for d in summary["dangling_links"]}
    assert set(reasons) == {
        "outside.ckpt",
        "dangling.ckpt",
        "loop-a.ckpt",
        "loop-b.ckpt",
        "notes.ckpt",
    }
    assert "outside the synced root" in reasons["outside.ckpt"]
    assert "dangling link" in reasons["dangling.ckpt"] and "dangling link" in reasons["loop-a.ckpt"]
    assert "not a checkpoint" in reasons["notes.ckpt"]
    assert set(raw_rows(db_url)) == {str(ckpts / "epoch-01_step-000010.ckpt")}

    text_out = invoke_db("sync", str(outputs))
    assert "5 links not indexed" in text_out.stdout
    assert f"link not indexed: {ckpts / 'dangling.ckpt'}" in text_out.stderr

    validated = invoke_db("validate", str(outputs), "--format", "json")
    data = json.loads(validated.stdout)
    assert data["counts"]["dangling_links"] == 5
    assert {Path(d["path"]).name for d in data["dangling_links"]} == set(reasons)


def test_a_link_out_of_the_root_is_never_read(tmp_path: Path, outputs: Path) -> None:
    """The target outside the root is not listed, fingerprinted nor opened (a FIFO would hang)."""
    ckpts = outputs / "run"
    ckpts.mkdir(parents=True)
    fifo = tmp_path / "fifo.ckpt"
    os.mkfifo(fifo)
    os.symlink(fifo, ckpts / "last.ckpt")
    links: list[tuple[str, str]] = []
    assert scan(str(outputs), links=links) == {}
    assert [Path(p).name for p, _ in links] == ["last.ckpt"]


def test_copy_detection_is_bounded(outputs: Path) -> None:
    """Only the ends are compared: files equal there count as copies, different there do not."""
    run = outputs / "run"
    run.mkdir(parents=True)
    body = os.urandom(3 * FINGERPRINT_BYTES)
    (run / "epoch-01.ckpt").write_bytes(body)
    middle = bytearray(body)
    middle[FINGERPRINT_BYTES + 10] ^= 0xFF  # differs only in the unread middle
    (run / "last.ckpt").write_bytes(bytes(middle))
    assert scan(str(outputs))[str(run / "last.ckpt")].is_last
    tail = bytearray(body)
    tail[-1] ^= 0xFF
    (run / "last.ckpt").write_bytes(bytes(tail))
    assert not scan(str(outputs))[str(run / "last.ckpt")].is_last


def test_rows_of_links_from_before_0006_fold_into_their_target(outputs: Path, db_url: str) -> None:
    """An index written before links were aliases holds a row per link: the next sync deletes
    those rows and lists the links in their target's aliases."""
    ckpts = run_tree(outputs)
    sync(outputs, db_url)
    link = str(ckpts / "best-hmean-0.9061.ckpt")
    engine = open_engine(db_url)
    try:
        with write_transaction(engine) as conn:
            # What revision 0005 stored: the link as a row of its own, no aliases.
            conn.execute(text("UPDATE checkpoints SET aliases = NULL, is_last = NULL"))
            conn.execute(
                text(
                    "INSERT INTO checkpoints (location, checkpoint_path, source, status, "
                    "checkpoint_exists, indexed_at) SELECT location, :link, source, status, "
                    "checkpoint_exists, indexed_at FROM checkpoints WHERE checkpoint_path = :best"
                ),
                {"link": link, "best": str(ckpts / "epoch-03_step-000032.ckpt")},
            )
    finally:
        engine.dispose()
    assert link in raw_rows(db_url)
    summary = sync(outputs, db_url)
    assert summary.removed == 1
    rows = raw_rows(db_url)
    assert link not in rows
    assert link in json.loads(rows[str(ckpts / "epoch-03_step-000032.ckpt")]["aliases"])
    assert rows[str(ckpts / "last.ckpt")]["is_last"]


@pytest.mark.parametrize("link_mode", ["symlink", "hardlink"])
def test_scan_sidecar_of_a_link_is_not_an_orphan(outputs: Path, link_mode: str) -> None:
    run = outputs / "run"
    real = write_checkpoint(run / "epoch-01.ckpt", seed_document())
    alias = run / "best-x.ckpt"
    if link_mode == "symlink":
        os.symlink(real.name, alias)
    else:
        os.link(real, alias)
    shutil.copy(sidecar_path_for(real), sidecar_path_for(alias))
    found = scan(str(outputs))
    assert list(found) == [str(real)]
    assert found[str(real)].aliases == (str(alias),)


def test_a_root_given_through_a_symlink_keeps_its_aliases(tmp_path: Path, outputs: Path) -> None:
    """validate scans the root as given: links inside a symlinked root are still aliases."""
    real = write_checkpoint(outputs / "run" / "epoch-01.ckpt", seed_document())
    os.symlink(real.name, outputs / "run" / "last.ckpt")
    via = tmp_path / "via"
    os.symlink(outputs, via)
    links: list[tuple[str, str]] = []
    found = scan(str(via), links=links)
    assert links == []
    assert found[str(via / "run" / "epoch-01.ckpt")].aliases == (str(via / "run" / "last.ckpt"),)
