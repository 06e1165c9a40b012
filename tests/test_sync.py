"""Sync: first sync, incremental re-reads, pruning, orphans, invalid inputs, CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from helpers.checkpoints import tiny_checkpoint, write_checkpoint
from helpers.files import HOUR_NS, age, set_mtime
from helpers.index_rows import content, plain_engine, raw_rows, row, sync, wipe
from helpers.sidecars import SEED_SIDECARS, seed_document
from sqlalchemy import text

import ckpt_index.sync.build as record_builder
import ckpt_index.sync.roots as sync_module
from ckpt_index import api
from ckpt_index.sidecar.files import dump_document, sidecar_path_for


@pytest.fixture
def wide_racy_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 30 s racy window: on a loaded machine 2 s may pass between writing a file and the scan."""
    monkeypatch.setattr(sync_module, "RACY_WINDOW_NS", 30 * 10**9)


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The sidecar paths the sync engine reads, in order."""
    calls: list[str] = []
    real = record_builder.read_sidecar

    def counting(path):
        calls.append(str(path))
        return real(path)

    monkeypatch.setattr(record_builder, "read_sidecar", counting)
    return calls


def rewrite_same_size(sidecar: Path, old: str, new: str) -> None:
    """Replace ``old`` by ``new`` (same length) in the sidecar text."""
    assert len(old) == len(new)
    text = sidecar.read_text()
    assert text.count(old) >= 1, f"{old!r} not in {sidecar}"
    before = sidecar.stat().st_size
    sidecar.write_text(text.replace(old, new))
    assert sidecar.stat().st_size == before


def make_three(outputs: Path) -> list[Path]:
    """One checkpoint per seed sidecar, in the naming scheme."""
    ckpts = []
    for i, seed in enumerate(SEED_SIDECARS):
        name = seed.name[: -len(".metadata.yaml")]
        ckpt = outputs / f"exp_{i}" / "checkpoints" / f"epoch-{i:02d}_step-{i * 100:06d}.ckpt"
        write_checkpoint(ckpt, seed_document(name))
        ckpts.append(ckpt)
    return ckpts


# ------------------------------------------------------------------------------ first sync
def test_first_sync_indexes_every_sidecar(outputs: Path, db_url: str) -> None:
    ckpts = make_three(outputs)
    summary = api.sync(outputs, db=db_url)

    assert summary.roots == [str(outputs)]
    assert (summary.checkpoints, summary.sidecars, summary.parsed, summary.added) == (3, 3, 3, 3)
    assert (summary.updated, summary.removed, summary.unchanged) == (0, 0, 0)
    assert (summary.valid, summary.invalid, summary.missing, summary.orphaned) == (
        3,
        0,
        0,
        0,
    )
    assert summary.invalid_files == []

    rows = raw_rows(db_url)
    assert sorted(rows) == sorted(str(c) for c in ckpts)
    for ckpt in ckpts:
        doc = yaml.safe_load(sidecar_path_for(ckpt).read_text())
        got = rows[str(ckpt)]
        expected = _expected_row(ckpt, doc)
        actual = {k: got[k] for k in expected}
        assert actual == expected, ckpt
        assert got["metrics"] == pytest.approx(_expected_metrics(doc["metrics"]))
        assert {"precision", "recall", "hmean"} <= set(got["metrics"])
        assert json.loads(got["metadata_json"])["exp_name"] == doc["exp_name"]
        assert got["indexed_at"]


def _expected_row(ckpt: Path, doc: dict) -> dict:
    """The columns a sync stores for ``ckpt`` from its sidecar document ``doc``."""
    sidecar = sidecar_path_for(ckpt)
    training, model, metrics = doc["training"], doc["model"], doc["metrics"]
    ckpting = doc.get("checkpointing") or {}
    return {
        "sidecar_path": str(sidecar),
        "exp_name": doc["exp_name"],
        "architecture": model["architecture"],
        "encoder": model["encoder"]["model_name"],
        # A flag the sidecar does not state is not assumed (no default written as a fact).
        "encoder_pretrained": model["encoder"].get("pretrained"),
        "encoder_frozen": model["encoder"].get("frozen"),
        "decoder": (model.get("decoder") or {}).get("name"),
        "head": (model.get("head") or {}).get("name"),
        "loss": (model.get("loss") or {}).get("name"),
        "epoch": training["epoch"],
        "global_step": training["global_step"],
        "training_phase": training.get("training_phase", "training"),
        "max_epochs": training.get("max_epochs"),
        "precision": metrics.get("precision"),
        "recall": metrics.get("recall"),
        "hmean": metrics.get("hmean"),
        "validation_loss": metrics.get("validation_loss"),
        "monitor": ckpting.get("monitor"),
        "mode": ckpting.get("mode"),
        "save_top_k": ckpting.get("save_top_k"),
        "save_last": ckpting.get("save_last"),
        "created_at": str(doc["created_at"]),
        "hydra_config_path": doc.get("hydra_config_path"),
        "wandb_run_id": doc.get("wandb_run_id"),
        "source": "sidecar",
        "status": "valid",
        "error": None,
        "checkpoint_exists": 1,
        "ckpt_size": ckpt.stat().st_size,
        "sidecar_size": sidecar.stat().st_size,
    }


def _expected_metrics(metrics: dict) -> dict:
    """Every metric: additional_metrics plus the canonical ones (which win on a name clash)."""
    want = dict(metrics.get("additional_metrics") or {})
    for name in ("precision", "recall", "hmean", "validation_loss"):
        if metrics.get(name) is not None:
            want[name] = metrics[name]
    return want


def test_sync_accepts_several_roots_and_rejects_a_file(
    outputs: Path, db_path: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    write_checkpoint(outputs / "a" / "x.ckpt")
    write_checkpoint(other / "b" / "y.ckpt")
    summary = api.sync([outputs, other], db=db_path)
    assert summary.roots == [str(outputs), str(other)]
    assert summary.checkpoints == 2 and summary.added == 2
    with pytest.raises(NotADirectoryError):
        api.sync(outputs / "a" / "x.ckpt", db=db_path)


# ----------------------------------------------------------------------------- incremental
def test_second_sync_reads_nothing(outputs: Path, db_url: str, reads: list[str]) -> None:
    ckpts = make_three(outputs)
    age(outputs)
    sync(outputs, db=db_url)
    assert len(reads) == 3
    before = raw_rows(db_url)

    reads.clear()
    summary = sync(outputs, db=db_url)
    assert reads == []
    assert (summary.parsed, summary.unchanged, summary.added, summary.updated) == (0, 3, 0, 0)
    # The counts describe the tree even when nothing was read.
    assert (summary.checkpoints, summary.sidecars, summary.valid) == (3, 3, 3)
    assert raw_rows(db_url) == before  # not even indexed_at moved
    for c in ckpts:
        assert before[str(c)]["sidecar_mtime_ns"] == sidecar_path_for(c).stat().st_mtime_ns


def test_fresh_files_are_read_again_once_racy_window_passed(
    outputs: Path, db_url: str, reads: list[str], wide_racy_window: None
) -> None:
    make_three(outputs)
    sync(outputs, db=db_url)  # files written just now: inside the racy window
    reads.clear()
    summary = sync(outputs, db=db_url)
    assert summary.parsed == 3 and len(reads) == 3
    age(outputs)
    reads.clear()
    sync(outputs, db=db_url)  # aged files: rows now carry the real mtimes
    reads.clear()
    summary = sync(outputs, db=db_url)
    assert summary.parsed == 0 and reads == []


def test_racy_window_zero_skips_fresh_files(
    outputs: Path, db_path: Path, reads: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sync_module, "RACY_WINDOW_NS", 0)
    make_three(outputs)
    sync(outputs, db=db_path)
    reads.clear()
    summary = sync(outputs, db=db_path)
    assert summary.parsed == 0 and reads == [] and summary.unchanged == 3


def test_changed_sidecar_is_the_only_one_read(outputs: Path, db_url: str, reads: list[str]) -> None:
    ckpts = make_three(outputs)
    age(outputs)
    sync(outputs, db=db_url)
    before = raw_rows(db_url)

    target = ckpts[1]
    sidecar = sidecar_path_for(target)
    doc = yaml.safe_load(sidecar.read_text())
    doc["metrics"]["hmean"] = 0.5
    doc["training"]["epoch"] = 42
    sidecar.write_text(dump_document(doc))
    age(sidecar, by_ns=HOUR_NS // 2)  # a different mtime, outside the racy window

    reads.clear()
    summary = sync(outputs, db=db_url)
    assert reads == [str(sidecar)]
    assert (summary.parsed, summary.updated, summary.unchanged, summary.added) == (1, 1, 2, 0)
    after = raw_rows(db_url)
    assert after[str(target)]["hmean"] == 0.5
    assert after[str(target)]["epoch"] == 42
    assert after[str(target)]["metrics"]["hmean"] == 0.5
    assert after[str(target)]["id"] == before[str(target)]["id"]
    for other in (ckpts[0], ckpts[2]):
        assert after[str(other)] == before[str(other)]


def test_same_size_rewrite_with_new_mtime_is_read(
    outputs: Path, db_path: Path, reads: list[str]
) -> None:
    ckpt = write_checkpoint(outputs / "e" / "a.ckpt", **{"metrics.hmean": 0.8431})
    sidecar = sidecar_path_for(ckpt)
    age(outputs)
    sync(outputs, db=db_path)
    old = sidecar.stat()

    rewrite_same_size(sidecar, "hmean: 0.8431", "hmean: 0.8432")
    set_mtime(sidecar, old.st_mtime_ns + 1_000_000)  # one millisecond later, still long ago
    reads.clear()
    summary = sync(outputs, db=db_path)
    assert reads == [str(sidecar)] and summary.parsed == 1
    assert row(db_path, ckpt)["hmean"] == 0.8432


def test_same_size_same_mtime_change_inside_racy_window_is_read(
    outputs: Path, db_path: Path, reads: list[str], wide_racy_window: None
) -> None:
    ckpt = write_checkpoint(outputs / "e" / "a.ckpt", **{"metrics.hmean": 0.8431})
    sidecar = sidecar_path_for(ckpt)
    sync(outputs, db=db_path)  # immediately: the sidecar is inside the racy window
    assert row(db_path, ckpt)["hmean"] == 0.8431
    old = sidecar.stat()

    rewrite_same_size(sidecar, "hmean: 0.8431", "hmean: 0.8432")
    os.utime(sidecar, ns=(old.st_atime_ns, old.st_mtime_ns))
    new = sidecar.stat()
    assert (new.st_size, new.st_mtime_ns) == (old.st_size, old.st_mtime_ns)

    reads.clear()
    summary = sync(outputs, db=db_path)
    assert reads == [str(sidecar)] and summary.parsed == 1
    assert row(db_path, ckpt)["hmean"] == 0.8432
    assert row(db_path, ckpt)["metrics"]["hmean"] == 0.8432


def test_racy_rewrite_restored_to_epoch_zero_mtime_is_read(
    outputs: Path, db_url: str, reads: list[str], wide_racy_window: None
) -> None:
    """The racy sentinel must not be a value a real file can have.

    A sidecar synced inside the racy window, then rewritten at the same size with its mtime set to
    the epoch (as archive extractors and reproducible builds do), must be read again.
    """
    ckpt = write_checkpoint(outputs / "e" / "a.ckpt", **{"metrics.hmean": 0.8431})
    sidecar = sidecar_path_for(ckpt)
    sync(outputs, db=db_url)
    rewrite_same_size(sidecar, "hmean: 0.8431", "hmean: 0.8432")
    set_mtime(sidecar, 0)
    summary = sync(outputs, db=db_url)
    assert summary.parsed == 1
    assert row(db_url, ckpt)["hmean"] == 0.8432


def test_checkpoint_file_change_updates_state_without_reading(
    outputs: Path, db_url: str, reads: list[str]
) -> None:
    ckpt = write_checkpoint(outputs / "e" / "a.ckpt")
    age(outputs)
    sync(outputs, db=db_url)
    ckpt.write_bytes(b"a bigger placeholder than before\n")
    reads.clear()
    summary = sync(outputs, db=db_url)
    assert reads == [] and summary.parsed == 0 and summary.unchanged == 1
    got = row(db_url, ckpt)
    st = ckpt.stat()
    assert (got["ckpt_size"], got["ckpt_mtime_ns"]) == (st.st_size, st.st_mtime_ns)


def test_checkpoint_file_change_rebuilds_only_its_row(
    outputs: Path, db_url: str, reads: list[str]
) -> None:
    # A replaced checkpoint is checked again (integrity, staleness), with its sidecar.
    ckpt = write_checkpoint(outputs / "e" / "a.ckpt", seed_document())
    other = write_checkpoint(outputs / "e" / "b.ckpt", seed_document())
    age(outputs)
    sync(outputs, db=db_url)
    ckpt.write_bytes(tiny_checkpoint("a bigger checkpoint than before"))
    age(ckpt)
    reads.clear()
    summary = sync(outputs, db=db_url)
    assert reads == [str(sidecar_path_for(ckpt))] and summary.parsed == 1 and summary.unchanged == 1
    got = row(db_url, ckpt)
    st = ckpt.stat()
    assert (got["ckpt_size"], got["ckpt_mtime_ns"]) == (st.st_size, st.st_mtime_ns)
    assert got["status"] == "valid" and row(db_url, other)["status"] == "valid"


# ----------------------------------------------------------------------------------- pruning
def test_deleted_checkpoint_and_sidecar_are_pruned(outputs: Path, db_url: str) -> None:
    ckpts = make_three(outputs)
    sync(outputs, db=db_url)
    gone = ckpts[0]
    gone_id = row(db_url, gone)["id"]
    gone.unlink()
    sidecar_path_for(gone).unlink()

    summary = sync(outputs, db=db_url)
    assert summary.removed == 1 and summary.checkpoints == 2
    rows = raw_rows(db_url)
    assert sorted(rows) == sorted(str(c) for c in ckpts[1:])
    engine = plain_engine(db_url)
    try:
        with engine.connect() as conn:
            assert (
                conn.execute(
                    text("SELECT count(*) FROM checkpoint_metrics WHERE checkpoint_id = :id"),
                    {"id": gone_id},
                ).scalar()
                == 0
            )
    finally:
        engine.dispose()


def test_deleted_missing_checkpoint_is_pruned(outputs: Path, db_url: str) -> None:
    ckpt = write_checkpoint(outputs / "e" / "nometa.ckpt")
    keep = write_checkpoint(outputs / "e" / "meta.ckpt", seed_document())
    sync(outputs, db=db_url)
    ckpt.unlink()
    summary = sync(outputs, db=db_url)
    assert summary.removed == 1
    assert sorted(raw_rows(db_url)) == [str(keep)]


def test_sync_of_one_root_leaves_other_roots_alone(tmp_path: Path, db_url: str) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    ka = write_checkpoint(a / "e" / "x.ckpt", seed_document())
    kb = write_checkpoint(b / "e" / "y.ckpt", seed_document())
    sync(a, db=db_url)
    sync(b, db=db_url)
    ka.unlink()
    sidecar_path_for(ka).unlink()

    summary = sync(b, db=db_url)
    assert summary.removed == 0
    assert sorted(raw_rows(db_url)) == sorted([str(ka), str(kb)])  # a not synced: a's row stays
    sync(a, db=db_url)
    assert sorted(raw_rows(db_url)) == [str(kb)]


@pytest.mark.parametrize("sibling", ["out2", "out0", "out-old", "out.bak", "outx", "out 2"])
def test_root_that_prefixes_another_does_not_prune_it(
    tmp_path: Path, db_url: str, sibling: str
) -> None:
    out, other = tmp_path / "out", tmp_path / sibling
    k_out = write_checkpoint(out / "e" / "x.ckpt", seed_document())
    k_other = write_checkpoint(other / "e" / "x.ckpt", seed_document())
    sync([out, other], db=db_url)
    k_out.unlink()
    sidecar_path_for(k_out).unlink()

    summary = sync(out, db=db_url)
    assert summary.removed == 1
    assert sorted(raw_rows(db_url)) == [str(k_other)]
    # Syncing an emptied sibling does not reach into ``out`` either, and vice versa.
    k_out2 = write_checkpoint(out / "e" / "z.ckpt", seed_document())
    sync(out, db=db_url)
    k_other.unlink()
    sidecar_path_for(k_other).unlink()
    sync(other, db=db_url)
    assert sorted(raw_rows(db_url)) == [str(k_out2)]


def test_syncing_a_subdirectory_prunes_only_below_it(outputs: Path, db_url: str) -> None:
    k1 = write_checkpoint(outputs / "a" / "x.ckpt", seed_document())
    k2 = write_checkpoint(outputs / "b" / "y.ckpt", seed_document())
    sync(outputs, db=db_url)
    k1.unlink()
    sidecar_path_for(k1).unlink()
    sync(outputs / "b", db=db_url)
    assert sorted(raw_rows(db_url)) == sorted([str(k1), str(k2)])
    sync(str(outputs) + "/", db=db_url)  # trailing slash: the same root
    assert sorted(raw_rows(db_url)) == [str(k2)]


# ----------------------------------------------------------------------------------- orphans
def _query_paths(invoke, *extra: str) -> list[str]:
    result = invoke("query", "--format", "json", *extra)
    if result.exit_code == 1:
        return []
    assert result.exit_code == 0, result.output
    return [r["checkpoint_path"] for r in json.loads(result.stdout)]


def test_orphan_sidecar_is_kept_flagged_and_hidden(outputs: Path, db_url: str, invoke_db) -> None:
    keep = write_checkpoint(outputs / "e" / "keep.ckpt", seed_document())
    orphan = write_checkpoint(
        outputs / "e" / "orphan.ckpt", seed_document(), **{"metrics.hmean": 0.99}
    )
    sync(outputs, db=db_url)
    orphan.unlink()

    summary = sync(outputs, db=db_url)
    assert summary.orphaned == 1 and summary.removed == 0
    assert summary.checkpoints == 1 and summary.sidecars == 2
    got = row(db_url, orphan)
    assert got["checkpoint_exists"] == 0
    assert got["status"] == "valid" and got["hmean"] == 0.99
    assert got["sidecar_path"] == str(sidecar_path_for(orphan))

    assert _query_paths(invoke_db) == [str(keep)]
    assert sorted(_query_paths(invoke_db, "--include-orphans")) == sorted([str(keep), str(orphan)])
    best = invoke_db("query", "--best-by", "hmean", "--format", "paths")
    assert best.stdout.strip() == str(keep)  # the orphan's 0.99 is not offered

    write_checkpoint(orphan, None)  # the checkpoint comes back
    summary = sync(outputs, db=db_url)
    assert summary.orphaned == 0
    assert row(db_url, orphan)["checkpoint_exists"] == 1
    assert sorted(_query_paths(invoke_db)) == sorted([str(keep), str(orphan)])


def test_sidecar_only_from_the_start_is_an_orphan(outputs: Path, db_url: str) -> None:
    orphan = write_checkpoint(outputs / "e" / "x.ckpt", seed_document(), ckpt_file=False)
    summary = sync(outputs, db=db_url)
    assert (summary.checkpoints, summary.sidecars, summary.orphaned, summary.valid) == (0, 1, 1, 1)
    assert row(db_url, orphan)["checkpoint_exists"] == 0
    sidecar_path_for(orphan).unlink()
    summary = sync(outputs, db=db_url)
    assert summary.removed == 1 and raw_rows(db_url) == {}


# ------------------------------------------------------------------------ missing sidecars
def test_checkpoint_without_sidecar_lifecycle(outputs: Path, db_url: str) -> None:
    ckpt = write_checkpoint(outputs / "e" / "x.ckpt")
    summary = sync(outputs, db=db_url)
    counts = (summary.checkpoints, summary.sidecars, summary.missing, summary.valid)
    assert counts == (1, 0, 1, 0)
    got = row(db_url, ckpt)
    assert (got["status"], got["source"], got["sidecar_path"]) == ("missing", "none", None)
    assert got["exp_name"] is None
    assert got["checkpoint_exists"] == 1 and got["error"] is None and got["metrics"] == {}

    write_checkpoint(ckpt, seed_document())
    summary = sync(outputs, db=db_url)
    assert (summary.missing, summary.valid, summary.updated) == (0, 1, 1)
    got = row(db_url, ckpt)
    assert (got["status"], got["source"]) == ("valid", "sidecar")
    assert got["exp_name"] == seed_document()["exp_name"] and got["metrics"]

    sidecar_path_for(ckpt).unlink()
    summary = sync(outputs, db=db_url)
    assert (summary.missing, summary.valid, summary.removed) == (1, 0, 0)
    got = row(db_url, ckpt)
    assert (got["status"], got["source"], got["sidecar_path"]) == ("missing", "none", None)
    from ckpt_index.index.records import METADATA_COLUMNS

    assert {k: got[k] for k in METADATA_COLUMNS} == dict.fromkeys(METADATA_COLUMNS)
    assert got["sidecar_size"] is None and got["sidecar_mtime_ns"] is None
    assert got["metrics"] == {}


# ------------------------------------------------------------------------ invalid sidecars
INVALID = {
    "out_of_range": (
        lambda: dump_document({**seed_document(), "metrics": {"hmean": 1.7}}),
        "metrics.hmean",
    ),
    "missing_field": (
        lambda: dump_document({k: v for k, v in seed_document().items() if k != "exp_name"}),
        "exp_name",
    ),
    "yaml_error": (lambda: "exp_name: [unclosed\ntraining: {\n", "YAML error"),
    "not_a_mapping": (lambda: "- just\n- a list\n", "mapping"),
    "empty": (lambda: "", "empty"),
    "binary": (lambda: "exp_name: \x00\x01", "NUL"),
    "bad_version": (
        lambda: dump_document({**seed_document(), "schema_version": "2.0"}),
        "schema_version",
    ),
}


@pytest.mark.parametrize(
    "db_url, kind",
    # Each kind on SQLite; on PostgreSQL the two whose reasons carry odd text (NUL is not valid
    # in PostgreSQL text, a YAML error quotes the input).
    [("sqlite", kind) for kind in sorted(INVALID)]
    + [("postgresql", kind) for kind in ("binary", "yaml_error")],
    indirect=["db_url"],
)
def test_invalid_sidecar_recorded_counted_and_fixable(
    outputs: Path, db_url: str, reads: list[str], kind: str
) -> None:
    text, fragment = INVALID[kind]
    good = write_checkpoint(outputs / "e" / "good.ckpt", seed_document())
    bad = write_checkpoint(outputs / "e" / "bad.ckpt", text())
    age(outputs)

    summary = sync(outputs, db=db_url)
    assert (summary.valid, summary.invalid) == (1, 1)
    assert len(summary.invalid_files) == 1
    path, reason = summary.invalid_files[0]
    assert path == str(sidecar_path_for(bad)) and fragment in reason
    got = row(db_url, bad)
    assert got["status"] == "invalid" and got["source"] == "none"
    assert got["error"] == reason and got["exp_name"] is None and got["metrics"] == {}
    assert row(db_url, good)["status"] == "valid"

    # Unchanged and not read again, but still reported.
    reads.clear()
    summary = sync(outputs, db=db_url)
    assert reads == [] and summary.parsed == 0
    assert summary.invalid == 1 and summary.invalid_files == [(path, reason)]

    write_checkpoint(bad, seed_document())
    summary = sync(outputs, db=db_url)
    assert (summary.valid, summary.invalid, summary.invalid_files) == (2, 0, [])
    got = row(db_url, bad)
    assert got["status"] == "valid" and got["error"] is None and got["metrics"]


def test_valid_sidecar_becoming_invalid_loses_its_metadata(outputs: Path, db_url: str) -> None:
    ckpt = write_checkpoint(outputs / "e" / "x.ckpt", seed_document())
    sync(outputs, db=db_url)
    write_checkpoint(ckpt, seed_document(), **{"metrics.hmean": -0.5})
    summary = sync(outputs, db=db_url)
    assert summary.invalid == 1
    got = row(db_url, ckpt)
    assert got["status"] == "invalid" and got["hmean"] is None and got["metrics"] == {}
    assert "metrics.hmean" in got["error"]


def test_many_invalid_sidecars_never_abort(outputs: Path, db_path: Path) -> None:
    for i in range(30):
        write_checkpoint(outputs / "e" / f"bad{i:02d}.ckpt", "{{{{")
    for i in range(5):
        write_checkpoint(outputs / "e" / f"good{i}.ckpt", seed_document())
    summary = sync(outputs, db=db_path)
    assert (summary.invalid, summary.valid, len(summary.invalid_files)) == (30, 5, 30)
    assert len(raw_rows(db_path)) == 35


def _write_undecodable(directory: Path) -> bytes:
    """A checkpoint and sidecar named in Latin-1 ('café'), not UTF-8; skip where impossible."""
    raw_dir = os.fsencode(directory)
    directory.mkdir(parents=True, exist_ok=True)
    try:
        with open(os.path.join(raw_dir, b"caf\xe9.ckpt"), "wb") as handle:
            handle.write(b"placeholder\n")
    except OSError as exc:  # e.g. macOS filesystems refuse such names
        pytest.skip(f"this filesystem refuses non-UTF-8 file names: {exc}")
    with open(os.path.join(raw_dir, b"caf\xe9.metadata.yaml"), "wb") as handle:
        handle.write(dump_document(seed_document()).encode())
    return b"caf\xe9"


def test_undecodable_file_name_is_reported_and_does_not_abort(outputs: Path, db_url: str) -> None:
    """A name SQLite cannot store is an invalid input: reported, never the end of the sync."""
    good = write_checkpoint(outputs / "e" / "ok.ckpt", seed_document())
    _write_undecodable(outputs / "e")
    summary = sync(outputs, db_url)
    assert str(good) in raw_rows(db_url)
    assert row(db_url, good)["status"] == "valid"
    reported = [(p, r) for p, r in summary.invalid_files if "caf" in p]
    assert reported, summary.invalid_files
    assert all(reason for _, reason in reported)
    json.dumps(summary.to_dict())  # the summary stays printable


def test_cli_sync_with_undecodable_file_name_exits_cleanly(outputs: Path, invoke) -> None:
    write_checkpoint(outputs / "e" / "ok.ckpt", seed_document())
    _write_undecodable(outputs / "e")
    result = invoke("sync", str(outputs))
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 1
    assert "caf" in result.stderr


# ------------------------------------------------------------------------------------- CLI
def test_cli_text_summary_is_one_line(outputs: Path, invoke) -> None:
    make_three(outputs)
    write_checkpoint(outputs / "e" / "bad.ckpt", "- a list\n")
    result = invoke("sync", str(outputs))
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    assert lines[0].startswith("synced 4 checkpoints, 4 sidecars")
    assert "3 valid, 1 invalid" in lines[0]
    assert "invalid: " in result.stderr and "bad.metadata.yaml" in result.stderr


def test_cli_lists_at_most_twenty_invalid_files(outputs: Path, invoke) -> None:
    for i in range(25):
        write_checkpoint(outputs / "e" / f"bad{i:02d}.ckpt", "- a list\n")
    result = invoke("sync", str(outputs))
    assert result.exit_code == 0
    assert result.stderr.count("invalid: ") == 20
    assert "5 more invalid" in result.stderr
    assert len(result.stdout.splitlines()) == 1


@pytest.mark.parametrize("with_invalid", [False, True])
def test_cli_strict(outputs: Path, invoke, with_invalid: bool) -> None:
    make_three(outputs)
    if with_invalid:
        write_checkpoint(outputs / "e" / "bad.ckpt", "- a list\n")
    result = invoke("sync", str(outputs), "--strict")
    assert result.exit_code == (1 if with_invalid else 0), result.output
    if with_invalid:
        assert "1 invalid sidecar(s)" in result.stderr
    # The index is written either way.
    assert _query_paths(invoke, "--where", "status = 'valid'") != []
    # Without --strict the same tree exits 0.
    assert invoke("sync", str(outputs)).exit_code == 0


def test_cli_json_summary(outputs: Path, invoke_db) -> None:
    make_three(outputs)
    write_checkpoint(outputs / "e" / "bad.ckpt", "- a list\n")
    write_checkpoint(outputs / "e" / "nometa.ckpt")
    write_checkpoint(outputs / "e" / "orphan.ckpt", seed_document(), ckpt_file=False)
    result = invoke_db("sync", str(outputs), "--format", "json", "--no-infer")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["roots"] == [str(outputs)]
    expected = {
        "checkpoints": 5,
        "sidecars": 5,
        "parsed": 5,
        "unchanged": 0,
        "added": 6,
        "updated": 0,
        "removed": 0,
        "valid": 4,
        "invalid": 1,
        "orphaned": 1,
        "missing": 1,
        "without_sidecar": 1,
    }
    assert {k: data[k] for k in expected} == expected
    assert isinstance(data["elapsed_s"], float)
    assert len(data["invalid_files"]) == 1
    item = data["invalid_files"][0]
    assert item["path"] == str(outputs / "e" / "bad.metadata.yaml") and "mapping" in item["reason"]

    age(outputs)
    invoke_db("sync", str(outputs), "--no-infer")
    again = json.loads(invoke_db("sync", str(outputs), "--format", "json", "--no-infer").stdout)
    assert (again["parsed"], again["unchanged"], again["invalid"]) == (0, 6, 1)
    assert again["invalid_files"] == data["invalid_files"]


def test_cli_missing_root_is_an_error(tmp_path: Path, invoke) -> None:
    result = invoke("sync", str(tmp_path / "nope"))
    assert result.exit_code == 1
    assert "not a directory" in result.stderr


# ---------------------------------------------------------------------------------- progress
def test_cli_progress_on_stderr_only_when_asked(outputs: Path, invoke) -> None:
    make_three(outputs)
    shown = invoke("sync", str(outputs), "--progress")
    assert shown.exit_code == 0
    assert "syncing" in shown.stderr
    assert len(shown.stdout.splitlines()) == 1 and "syncing" not in shown.stdout

    write_checkpoint(outputs / "e" / "new.ckpt", seed_document())
    hidden = invoke("sync", str(outputs), "--no-progress")
    assert hidden.exit_code == 0 and hidden.stderr == ""

    write_checkpoint(outputs / "e" / "newer.ckpt", seed_document())
    default = invoke("sync", str(outputs))  # CliRunner's stderr is not a terminal
    assert default.exit_code == 0 and default.stderr == ""


def test_progress_callback_counts_up_to_total(
    outputs: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sync_module, "BATCH_SIZE", 2)
    ckpts = [write_checkpoint(outputs / "e" / f"c{i}.ckpt", seed_document()) for i in range(7)]
    calls: list[tuple[int, int]] = []
    sync(outputs, db=db_url, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(2, 7), (4, 7), (6, 7), (7, 7)]

    # Parsing, state-only updates and deletions all count towards the total.
    age(outputs)
    sync(outputs, db=db_url)
    write_checkpoint(ckpts[0], seed_document(), **{"metrics.hmean": 0.1})  # re-parse
    ckpts[1].write_bytes(b"bigger placeholder\n")  # checkpoint state only
    ckpts[2].unlink()
    sidecar_path_for(ckpts[2]).unlink()  # removal
    calls.clear()
    sync(outputs, db=db_url, progress=lambda done, total: calls.append((done, total)))
    dones = [d for d, _ in calls]
    assert dones == sorted(set(dones)) and calls[-1] == (3, 3)
    assert {t for _, t in calls} == {3}


def test_no_progress_calls_when_nothing_to_do(outputs: Path, db_path: Path) -> None:
    write_checkpoint(outputs / "e" / "x.ckpt", seed_document())
    age(outputs)
    sync(outputs, db=db_path)
    calls: list[tuple[int, int]] = []
    sync(outputs, db=db_path, progress=lambda d, t: calls.append((d, t)))
    assert calls == []


# ------------------------------------------------------------------------- rebuild from zero
def test_deleting_the_database_and_syncing_again_gives_the_same_rows(
    outputs: Path, db_url: str
) -> None:
    ckpts = make_three(outputs)
    write_checkpoint(outputs / "e" / "nometa.ckpt")
    write_checkpoint(outputs / "e" / "bad.ckpt", seed_document(), **{"training.epoch": -1})
    orphan = write_checkpoint(outputs / "e" / "orphan.ckpt", seed_document())
    sync(outputs, db=db_url)
    # History: changes, orphaning, fixes, deletions, each followed by a sync.
    orphan.unlink()
    write_checkpoint(ckpts[0], seed_document(), **{"metrics.hmean": 0.4242, "training.epoch": 3})
    sync(outputs, db=db_url)
    sidecar_path_for(ckpts[1]).unlink()
    write_checkpoint(
        outputs / "e" / "late.ckpt", seed_document(), **{"metrics.validation_loss": 0.5}
    )
    age(outputs)
    sync(outputs, db=db_url)
    ckpts[2].unlink()
    sidecar_path_for(ckpts[2]).unlink()
    sync(outputs, db=db_url)

    incremental = content(db_url)
    assert len(incremental) == 6
    wipe(db_url)
    sync(outputs, db=db_url)
    assert content(db_url) == incremental
