"""`ckpt-index rename` / scripts/migrate_checkpoints.py: older names to the naming scheme."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.checkpoints import write_checkpoint
from helpers.sidecars import seed_document

from ckpt_index.sidecar.files import read_sidecar, sidecar_path_for

REPO = Path(__file__).resolve().parents[1]

OLD = {
    "epoch_epoch_22_step_step_001932_20251009_015037.ckpt": "epoch-22_step-001932.ckpt",
    "epoch_epoch_02_step_step_000176_20251009_011245.ckpt": "epoch-02_step-000176.ckpt",
    "epoch=7-step=640.ckpt": "epoch-07_step-000640.ckpt",
    "epoch_15_step_1320.ckpt": "epoch-15_step-001320.ckpt",
}
KEEP = ["best-hmean-0.8920.ckpt", "last.ckpt", "epoch-30_step-002640.ckpt"]


@pytest.fixture
def tree(outputs: Path) -> Path:
    ckpts = outputs / "ocr_v1-dbnet-resnet18_training_20251015_120000" / "checkpoints"
    for name in [*OLD, *KEEP]:
        write_checkpoint(ckpts / name, seed_document())
    return ckpts


def listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def indexed_paths(invoke) -> set[str]:
    result = invoke("query", "--format", "paths", "--include-orphans")
    return set(result.stdout.split()) if result.exit_code == 0 else set()


def test_renames_to_the_scheme_with_sidecars_and_index(tree: Path, outputs: Path, invoke) -> None:
    assert invoke("sync", str(outputs)).exit_code == 0
    before = listing(tree)
    sidecar_text = {name: sidecar_path_for(tree / name).read_text() for name in OLD}

    result = invoke("rename", str(outputs))
    assert result.exit_code == 0, result.output
    assert "processed 4, renamed 4, deleted 0, skipped 0, errors 0" in result.stdout

    after = listing(tree)
    for old, new in OLD.items():
        assert old not in after and new in after
        moved = sidecar_path_for(tree / new)
        assert moved.read_text() == sidecar_text[old]  # moved, not rewritten
        read_sidecar(moved)
    assert len(after) == len(before)
    # The index follows: the new paths, none of the old ones, no duplicates.
    paths = indexed_paths(invoke)
    assert {str(tree / new) for new in OLD.values()} <= paths
    assert not {str(tree / old) for old in OLD} & paths
    assert len(paths) == len(OLD) + len(KEEP)
    # A sync afterwards finds nothing to do: rows and files agree.
    summary = json.loads(invoke("sync", str(outputs), "--format", "json").stdout)
    assert (summary["added"], summary["removed"]) == (0, 0)


def test_dry_run_changes_nothing(tree: Path, outputs: Path, invoke) -> None:
    assert invoke("sync", str(outputs)).exit_code == 0
    before, rows = listing(tree), indexed_paths(invoke)
    result = invoke("rename", str(outputs), "--dry-run", "--format", "json")
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert report["renamed"] == 4
    assert {Path(a["target"]).name for a in report["actions"] if a["kind"] == "rename"} == set(
        OLD.values()
    )
    assert listing(tree) == before and indexed_paths(invoke) == rows


def test_an_existing_target_is_never_overwritten(tree: Path, outputs: Path, invoke) -> None:
    target = tree / "epoch-07_step-000640.ckpt"
    target.write_bytes(b"precious")
    result = invoke("rename", str(outputs))
    assert result.exit_code == 0
    assert "skipped 1" in result.stdout
    assert "epoch=7-step=640.ckpt" in result.output and "target exists" in result.output
    assert target.read_bytes() == b"precious"
    assert (tree / "epoch=7-step=640.ckpt").exists()


def test_two_old_names_for_one_target_rename_once(tree: Path, outputs: Path, invoke) -> None:
    write_checkpoint(tree / "epoch=7-step=640-v1.ckpt", seed_document())
    result = invoke("rename", str(outputs), "--format", "json")
    report = json.loads(result.stdout)
    assert report["renamed"] == 4 and report["skipped"] == 1
    remaining = {"epoch=7-step=640-v1.ckpt", "epoch=7-step=640.ckpt"} & listing(tree)
    assert len(remaining) == 1 and (tree / "epoch-07_step-000640.ckpt").exists()


def test_delete_old_keeps_best_last_and_late_epochs(tree: Path, outputs: Path, invoke) -> None:
    assert invoke("sync", str(outputs)).exit_code == 0
    result = invoke("rename", str(outputs), "--delete-old", "--keep-from-epoch", "10")
    assert result.exit_code == 0, result.output
    assert "deleted 2" in result.stdout  # epochs 2 and 7
    after = listing(tree)
    for name in KEEP:
        assert name in after
    assert {"epoch-22_step-001932.ckpt", "epoch-15_step-001320.ckpt"} <= after
    for gone in ("epoch_epoch_02_step_step_000176_20251009_011245", "epoch=7-step=640"):
        assert f"{gone}.ckpt" not in after and f"{gone}.metadata.yaml" not in after
    assert not any("epoch-02" in p or "epoch-07" in p for p in indexed_paths(invoke))


def test_best_and_last_survive_even_below_the_threshold(tree: Path, outputs: Path, invoke) -> None:
    result = invoke("rename", str(outputs), "--delete-old", "--keep-from-epoch", "1000")
    assert result.exit_code == 0
    assert {"best-hmean-0.8920.ckpt", "last.ckpt"} <= listing(tree)


def test_delete_old_needs_a_threshold(tree: Path, outputs: Path, invoke) -> None:
    before = listing(tree)
    result = invoke("rename", str(outputs), "--delete-old")
    assert result.exit_code == 2
    assert "--keep-from-epoch" in result.output
    assert listing(tree) == before


def test_without_an_index_none_is_created(tree: Path, outputs: Path, db_path: Path, invoke) -> None:
    assert invoke("rename", str(outputs)).exit_code == 0
    assert not db_path.exists()


def test_migrate_checkpoints_script_is_the_same_tool(tree: Path, outputs: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "migrate_checkpoints.py"),
            str(outputs),
            "--dry-run",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "dry run: processed 4, renamed 4" in proc.stdout
    assert set(OLD) <= listing(tree)
