"""``pin`` / ``unpin`` (issue 13): ``pinned: true`` in the sidecar (a line edit that keeps every
other byte), in the row, through sync and query; links pin their target; a checkpoint without a
sidecar gets one; an invalid sidecar is refused. Real Lightning checkpoints, both backends."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest
from helpers.checkpoints import write_checkpoint
from helpers.files import age
from helpers.index_rows import content, raw_rows, sync, wipe
from helpers.sidecars import seed_document
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ckpt_index
from ckpt_index.sidecar.files import dump_document, read_sidecar, sidecar_path_for

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")

from helpers.modules import Detector, tiny_trainer  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from ckpt_index.lightning import MetadataCallback  # noqa: E402

EPOCH_0 = "epoch-00_step-000002.ckpt"
EPOCH_1 = "epoch-01_step-000004.ckpt"
EPOCH_2 = "epoch-02_step-000006.ckpt"


def fit(run: Path, *, sidecars: bool) -> None:
    """Three epochs of a real fit: every epoch kept, ``last.ckpt`` a link to the newest."""
    checkpointing = ModelCheckpoint(
        dirpath=run / "checkpoints",
        filename="epoch-{epoch:02d}_step-{step:06d}",
        auto_insert_metric_name=False,
        monitor="val/hmean",
        mode="max",
        save_top_k=-1,
        save_last="link",
    )
    callbacks: list[Any] = [checkpointing]
    if sidecars:
        callbacks.append(MetadataCallback(run.name, db=False))
    data = DataLoader(TensorDataset(torch.randn(8, 4), torch.randn(8, 1)), batch_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = tiny_trainer(run, max_epochs=3, callbacks=callbacks)
        trainer.fit(Detector(), data, data)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``exp`` (sidecars written by the callback) and ``bare`` (no sidecars), trained once."""
    root = tmp_path_factory.mktemp("trained") / "outputs"
    fit(root / "exp", sidecars=True)
    fit(root / "bare", sidecars=False)
    return root


@pytest.fixture
def outputs(trained: Path, tmp_path: Path) -> Path:
    root = tmp_path / "outputs"
    shutil.copytree(trained, root, symlinks=True)
    return root


def ckpts(outputs: Path, run: str = "exp") -> Path:
    return outputs / run / "checkpoints"


def pinned_rows(db_url: str) -> dict[str, bool]:
    return {path: bool(row["pinned"]) for path, row in raw_rows(db_url).items()}


def query_json(invoke_db, *args: str) -> list[dict[str, Any]]:
    result = invoke_db("query", "--format", "json", *args)
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)


def identity(path: Path) -> tuple[int, int, bytes]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, path.read_bytes()


# --------------------------------------------------------------------------------------------
# The sidecar's text: every byte but the pinned line is kept


def _comments(text: str) -> tuple[str, str, str]:
    original = f"# picked by hand for the paper\n{text}# trailing note\n"
    return original, original + "pinned: true\n", original


def _crlf_without_final_newline(text: str) -> tuple[str, str, str]:
    original = text.replace("\n", "\r\n").rstrip("\r\n")
    return original, original + "\r\npinned: true", original


def _pinned_false_with_comment(text: str) -> tuple[str, str, str]:
    original = f"{text}pinned: false  # not yet\nextra_note: kept\n"
    pinned = original.replace("pinned: false", "pinned: true")
    return original, pinned, f"{text}extra_note: kept\n"


def _flow_style(text: str) -> tuple[str, str, str]:
    import yaml

    original = yaml.safe_dump(yaml.safe_load(text), default_flow_style=True, width=10_000)
    close = original.rindex("}")
    return original, f"{original[:close]}, pinned: true{original[close:]}", original


@pytest.mark.parametrize(
    "variant",
    [_comments, _crlf_without_final_newline, _pinned_false_with_comment, _flow_style],
    ids=["comments", "crlf-no-final-newline", "pinned-false-line", "flow-style"],
)
def test_pin_and_unpin_change_only_the_pinned_line(outputs, db_url, invoke_db, variant):
    ckpt = ckpts(outputs) / EPOCH_1
    sidecar = sidecar_path_for(ckpt)
    original, expected_pinned, expected_unpinned = variant(sidecar.read_text())
    sidecar.write_bytes(original.encode())
    sidecar.chmod(0o640)
    assert invoke_db("sync", str(outputs)).exit_code == 0
    metrics = raw_rows(db_url)[str(ckpt)]["metrics"]

    result = invoke_db("pin", str(ckpt))
    assert result.exit_code == 0, result.output
    assert result.output.startswith("pinned: ")
    assert "rewritten" not in result.output
    assert sidecar.read_bytes() == expected_pinned.encode()
    assert sidecar.stat().st_mode & 0o777 == 0o640
    assert read_sidecar(sidecar).pinned is True
    row = raw_rows(db_url)[str(ckpt)]
    assert bool(row["pinned"]) and row["status"] == "valid" and row["metrics"] == metrics
    assert [p for p, pinned in pinned_rows(db_url).items() if pinned] == [str(ckpt)]

    result = invoke_db("unpin", str(ckpt))
    assert result.exit_code == 0, result.output
    assert result.output.startswith("unpinned: ")
    assert sidecar.read_bytes() == expected_unpinned.encode()
    assert sidecar.stat().st_mode & 0o777 == 0o640
    assert not any(pinned_rows(db_url).values())
    # No temporary file left behind.
    assert sorted(p.name for p in sidecar.parent.iterdir() if p.name.startswith(".")) == []


def test_pinning_twice_or_unpinning_the_unpinned_touches_nothing(outputs, db_url, invoke_db):
    ckpt = ckpts(outputs) / EPOCH_0
    sidecar = sidecar_path_for(ckpt)
    before = identity(sidecar)
    result = invoke_db("unpin", str(ckpt))
    assert result.exit_code == 0
    assert "not pinned" in result.output and "nothing to do" in result.output
    assert identity(sidecar) == before

    assert invoke_db("pin", str(ckpt)).exit_code == 0
    pinned = identity(sidecar)
    result = invoke_db("pin", str(ckpt))
    assert result.exit_code == 0
    assert "already pinned" in result.output and "nothing to do" in result.output
    assert identity(sidecar) == pinned


def test_the_row_pin_writes_is_the_row_a_fresh_sync_builds(outputs, db_url, invoke_db):
    assert invoke_db("sync", str(outputs)).exit_code == 0
    assert invoke_db("pin", str(ckpts(outputs) / EPOCH_2), str(ckpts(outputs, "bare") / EPOCH_0))
    after_pin = content(db_url)
    wipe(db_url)
    assert invoke_db("sync", str(outputs)).exit_code == 0
    fresh = content(db_url)

    def comparable(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        # Parameter sets are numbered in the order they were stored.
        return {p: {k: v for k, v in r.items() if k != "param_set_id"} for p, r in rows.items()}

    assert comparable(after_pin) == comparable(fresh)
    assert sum(bool(r["pinned"]) for r in fresh.values()) == 2


_COMMENT = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp")))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    newline=st.sampled_from(["\n", "\r\n"]),
    final_newline=st.booleans(),
)
def test_the_line_edit_round_trips_any_layout_of_a_real_sidecar(data, newline, final_newline):
    """Comments anywhere between the top-level entries, either line break, with or without a
    final one: pin gives the same document with ``pinned: true`` (no full rewrite) and unpin
    gives back the very same text."""
    from ckpt_index.sidecar.files import parse_sidecar_bytes
    from ckpt_index.tools.pin_text import edit_pinned, expected_document

    lines = dump_document(seed_document()).splitlines()
    top_level = [i for i, line in enumerate(lines) if line and not line[0].isspace()]
    spots = data.draw(st.lists(st.sampled_from([*top_level, len(lines)]), max_size=4))
    for spot in sorted(spots, reverse=True):
        lines.insert(spot, "# " + data.draw(_COMMENT).strip())
    original = newline.join(lines) + (newline if final_newline else "")
    document = parse_sidecar_bytes(original.encode())

    pinned = edit_pinned(original, document, True)
    assert pinned.rewritten is None
    assert parse_sidecar_bytes(pinned.text.encode()) == expected_document(document, True)
    assert pinned.text.startswith(original.rstrip("\r\n"))
    unpinned = edit_pinned(pinned.text, parse_sidecar_bytes(pinned.text.encode()), False)
    assert unpinned.rewritten is None and unpinned.text == original


def test_a_stale_sidecar_stays_stale(outputs, db_url, invoke_db):
    """A sidecar older than its (replaced) checkpoint describes the file it replaced: pinning
    keeps its mtime, so the index still flags it, as a fresh sync does."""
    ckpt = ckpts(outputs) / EPOCH_1
    sidecar = sidecar_path_for(ckpt)
    age(sidecar)
    assert invoke_db("sync", str(outputs)).exit_code == 0
    assert raw_rows(db_url)[str(ckpt)]["stale"]
    mtime = sidecar.stat().st_mtime_ns
    assert invoke_db("pin", str(ckpt)).exit_code == 0
    assert read_sidecar(sidecar).pinned is True and sidecar.stat().st_mtime_ns == mtime
    row = raw_rows(db_url)[str(ckpt)]
    assert row["stale"] and row["pinned"]
    wipe(db_url)
    assert invoke_db("sync", str(outputs)).exit_code == 0
    row = raw_rows(db_url)[str(ckpt)]
    assert row["stale"] and row["pinned"]
    # A sidecar that is not stale gets a new mtime (a sync reads it again).
    other = sidecar_path_for(ckpts(outputs) / EPOCH_2)
    before = other.stat().st_mtime_ns
    assert invoke_db("pin", str(ckpts(outputs) / EPOCH_2)).exit_code == 0
    assert other.stat().st_mtime_ns > before


# --------------------------------------------------------------------------------------------
# Which checkpoint a path pins


def test_a_link_pins_its_target(outputs, db_url, invoke_db):
    run = ckpts(outputs)
    assert (run / "last.ckpt").is_symlink()
    target = (run / "last.ckpt").resolve()
    assert invoke_db("sync", str(outputs)).exit_code == 0

    result = invoke_db("pin", str(run / "last.ckpt"))
    assert result.exit_code == 0, result.output
    assert "through" in result.output
    assert read_sidecar(sidecar_path_for(target)).pinned is True
    last_sidecar = sidecar_path_for(run / "last.ckpt")  # the callback writes one for the link
    assert "pinned" not in last_sidecar.read_text()
    rows = query_json(invoke_db, "--pinned")
    assert [r["checkpoint_path"] for r in rows] == [str(target)]
    assert rows[0]["aliases"] == [str(run / "last.ckpt")]

    # A hard link pins the checkpoint whose row lists it (one checkpoint, one row).
    os.link(run / EPOCH_0, run / "kept-copy.ckpt")
    assert invoke_db("sync", str(outputs)).exit_code == 0
    count = len(raw_rows(db_url))
    assert invoke_db("pin", str(run / "kept-copy.ckpt")).exit_code == 0
    rows = query_json(invoke_db, "--pinned", "--sort", "epoch")
    assert len(rows) == 2 and len(raw_rows(db_url)) == count
    hard = next(r for r in rows if r["checkpoint_path"] != str(target))
    assert {hard["checkpoint_path"], *hard["aliases"]} == {
        str(run / EPOCH_0),
        str(run / "kept-copy.ckpt"),
    }
    assert read_sidecar(sidecar_path_for(hard["checkpoint_path"])).pinned is True


def test_a_checkpoint_without_a_sidecar_gets_one_that_keeps_its_row(outputs, db_url, invoke_db):
    ckpt = ckpts(outputs, "bare") / EPOCH_1
    sidecar = sidecar_path_for(ckpt)
    assert not sidecar.exists()
    assert invoke_db("sync", str(outputs)).exit_code == 0
    before = raw_rows(db_url)[str(ckpt)]
    assert before["status"] == "inferred" and before["metrics"]

    result = invoke_db("pin", str(ckpt))
    assert result.exit_code == 0, result.output
    assert "new sidecar" in result.output
    meta = read_sidecar(sidecar)  # validates
    assert meta.pinned is True
    assert (meta.training.epoch, meta.training.global_step) == (1, 4)
    after = raw_rows(db_url)[str(ckpt)]
    assert after["source"] == "sidecar" and after["status"] == "valid" and bool(after["pinned"])
    assert after["metrics"] == before["metrics"]
    for field in ("epoch", "global_step", "hmean", "architecture", "encoder"):
        assert after[field] == before[field], field
    # A sync reads the same row back from the new sidecar.
    assert invoke_db("sync", str(outputs)).exit_code == 0
    assert bool(raw_rows(db_url)[str(ckpt)]["pinned"])


def test_an_invalid_sidecar_is_refused_and_left_as_it_is(outputs, db_url, invoke_db):
    ckpt = ckpts(outputs) / EPOCH_0
    sidecar = sidecar_path_for(ckpt)
    sidecar.write_text("# hand-edited\nexp_name: exp\ntraining: {epoch: -3}\n")
    before = identity(sidecar)
    assert invoke_db("sync", str(outputs)).exit_code == 0
    other = ckpts(outputs) / EPOCH_1

    result = invoke_db("pin", str(ckpt), str(other))
    assert result.exit_code == 1
    assert "invalid sidecar" in result.stderr and "training.epoch" in result.stderr
    assert identity(sidecar) == before
    assert not raw_rows(db_url)[str(ckpt)]["pinned"]
    # The other path was still pinned.
    assert [r["checkpoint_path"] for r in query_json(invoke_db, "--pinned")] == [str(other)]
    assert invoke_db("unpin", str(ckpt)).exit_code == 1
    assert identity(sidecar) == before


def test_paths_that_are_no_checkpoint_are_refused(outputs, invoke_db):
    notes = outputs / "notes.txt"
    notes.write_text("x")
    result = invoke_db("pin", str(notes))
    assert result.exit_code == 1 and "not a checkpoint" in result.stderr
    assert notes.read_text() == "x"
    assert invoke_db("pin", str(outputs / "missing.ckpt")).exit_code == 2  # no such file


# --------------------------------------------------------------------------------------------
# pinned through sync, query and show


def test_sync_reads_a_hand_written_pinned_flag(outputs, db_url, invoke_db):
    run = outputs / "hand" / "checkpoints"
    kept = write_checkpoint(run / "epoch-05.ckpt", seed_document(), pinned=True)
    plain = write_checkpoint(run / "epoch-06.ckpt", seed_document(), **{"training.epoch": 6})
    assert invoke_db("sync", str(outputs)).exit_code == 0

    rows = query_json(invoke_db, "--pinned")
    assert [r["checkpoint_path"] for r in rows] == [str(kept)]
    assert rows[0]["pinned"] is True
    everything = query_json(invoke_db)
    assert all(isinstance(r["pinned"], bool) for r in everything)
    assert sum(r["pinned"] for r in everything) == 1
    where = query_json(invoke_db, "--where", "pinned = true")
    assert [r["checkpoint_path"] for r in where] == [str(kept)]
    assert str(plain) in {
        r["checkpoint_path"] for r in query_json(invoke_db, "--where", "pinned = false")
    }
    assert query_json(invoke_db, "--pinned", "--columns", "path,pinned") == [
        {"checkpoint_path": str(kept), "pinned": True}
    ]
    table = invoke_db("query", "--pinned", "--columns", "path,pinned")
    assert table.exit_code == 0 and table.output.splitlines()[0].split() == ["path", "pinned"]
    assert table.output.splitlines()[1].split()[1] == "True"

    shown = json.loads(invoke_db("show", str(kept)).stdout)
    assert shown["pinned"] is True and shown["metadata"]["pinned"] is True
    assert json.loads(invoke_db("show", str(plain)).stdout)["pinned"] is False

    # Unpinned by hand: the next sync clears it; nothing pinned is a no-match (exit 1).
    sidecar_path_for(kept).write_text(dump_document(seed_document()))
    assert invoke_db("sync", str(outputs)).exit_code == 0
    result = invoke_db("query", "--pinned")
    assert result.exit_code == 1 and "no checkpoint matches" in result.stderr


def test_unpin_clears_query_pinned(outputs, db_url, invoke_db):
    ckpt = ckpts(outputs) / EPOCH_2
    assert invoke_db("pin", str(ckpt)).exit_code == 0  # the index is made by pin
    assert [r["checkpoint_path"] for r in query_json(invoke_db, "--pinned")] == [str(ckpt)]
    assert invoke_db("unpin", str(ckpt)).exit_code == 0
    assert query_json(invoke_db, "--pinned") == []
    assert "pinned" not in sidecar_path_for(ckpt).read_text()


def test_python_api(outputs, db_url):
    ckpt = ckpts(outputs) / EPOCH_0
    sync([outputs], db_url)
    [outcome] = ckpt_index.pin(ckpt, db=db_url)
    assert outcome.ok and outcome.action == "pinned" and outcome.indexed
    assert outcome.checkpoint_path == str(ckpt)
    assert [r["checkpoint_path"] for r in ckpt_index.query_index(db_url, pinned=True)] == [
        str(ckpt)
    ]
    [outcome] = ckpt_index.unpin([str(ckpt)], db=db_url)
    assert outcome.action == "unpinned"
    # db=False: the sidecar only; the next sync reads it.
    [outcome] = ckpt_index.pin(ckpt, db=False)
    assert outcome.ok and not outcome.indexed
    assert ckpt_index.query_index(db_url, pinned=True) == []
    sync([outputs], db_url)
    assert [r["checkpoint_path"] for r in ckpt_index.query_index(db_url, pinned=True)] == [
        str(ckpt)
    ]
