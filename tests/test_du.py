"""``du`` (issue 13): disk used by the indexed checkpoints per experiment, encoder, phase, status
or run, from the index (one row per checkpoint: links not counted twice), this location's
existing checkpoints under the roots, largest first, with a total; it never writes. Both
backends."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from helpers.checkpoints import tiny_checkpoint, write_checkpoint
from helpers.index_rows import sync
from helpers.sidecars import seed_document
from sqlalchemy import create_engine, inspect

import ckpt_index
from ckpt_index.query.table import human_size
from ckpt_index.sidecar.files import sidecar_path_for

RESNET18 = {"model.encoder.model_name": "resnet18"}


def _ckpt(path: Path, size: int, **changes: Any) -> Path:
    write_checkpoint(path, seed_document(), **changes)
    path.write_bytes(tiny_checkpoint("x" * size))
    return path


@pytest.fixture
def tree(outputs: Path) -> dict[str, Path]:
    """Two experiments of different sizes, encoders and phases, an invalid sidecar, a checkpoint
    without one, a link, and an orphaned sidecar (its checkpoint deleted after the sync)."""
    a = outputs / "exp_a-dbnet-resnet18_training_20251015_120000" / "checkpoints"
    b = outputs / "exp_b" / "checkpoints"
    paths = {
        "a0": _ckpt(a / "epoch-00.ckpt", 1000, exp_name="exp_a", **RESNET18),
        "a1": _ckpt(
            a / "epoch-01.ckpt", 3000, exp_name="exp_a", **RESNET18, **{"training.epoch": 1}
        ),
        "b0": _ckpt(
            b / "epoch-00.ckpt",
            9000,
            exp_name="exp_b",
            **{"model.encoder.model_name": "resnet50", "training.training_phase": "finetuning"},
        ),
        "bad": _ckpt(b / "epoch-01.ckpt", 500),
        "bare": a / "epoch-02.ckpt",
        "gone": _ckpt(b / "epoch-02.ckpt", 700, exp_name="exp_b"),
    }
    sidecar_path_for(paths["bad"]).write_text("exp_name: exp_b\ntraining: {epoch: -1}\n")
    paths["bare"].write_bytes(tiny_checkpoint("bare" * 100))
    os.symlink("epoch-01.ckpt", a / "last.ckpt")
    return paths


def synced(tree: dict[str, Path], outputs: Path, db_url: str) -> None:
    sync([outputs], db_url)
    tree["gone"].unlink()
    sync([outputs], db_url)  # its sidecar stays: an orphan, not counted


def du_json(invoke_db, *args: str) -> dict[str, Any]:
    result = invoke_db("du", "--format", "json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def on_disk(path: str) -> tuple[int, int]:
    """(checkpoint bytes, sidecar bytes) of a checkpoint as the files are now."""
    sidecar = sidecar_path_for(path)
    return os.stat(path).st_size, sidecar.stat().st_size if sidecar.exists() else 0


def expected(invoke_db, field: str) -> list[tuple[Any, int, int]]:
    """(group, count, bytes) computed from the query's rows and the files' sizes."""
    result = invoke_db("query", "--format", "json", "--include-unreadable")
    groups: dict[Any, list[int]] = defaultdict(lambda: [0, 0])
    for row in json.loads(result.stdout):
        path = row["checkpoint_path"]
        key = os.path.dirname(path) if field == "run" else row[field]
        groups[key][0] += 1
        groups[key][1] += sum(on_disk(path))
    return sorted(((k, n, b) for k, (n, b) in groups.items()), key=lambda g: (-g[2], -g[1]))


@pytest.mark.parametrize(
    ("by", "field"),
    [
        ("exp_name", "exp_name"),
        ("encoder", "encoder"),
        ("phase", "training_phase"),
        ("status", "status"),
        ("run", "run"),
    ],
)
def test_groups_counts_bytes_largest_first(tree, outputs, db_url, invoke_db, by, field):
    synced(tree, outputs, db_url)
    data = du_json(invoke_db, "--by", by)
    got = [(g["group"], g["count"], g["bytes"]) for g in data["groups"]]
    assert got == expected(invoke_db, field)
    assert data["by"] == by and data["roots"] == []
    assert [g["bytes"] for g in data["groups"]] == sorted(
        (g["bytes"] for g in data["groups"]), reverse=True
    )
    for group in data["groups"]:
        assert group["bytes"] == group["checkpoint_bytes"] + group["sidecar_bytes"]
        assert group["size"] == human_size(group["bytes"])
    # Five checkpoints: the link is no sixth, the orphaned sidecar is not counted.
    assert data["total"]["count"] == 5
    assert data["total"]["bytes"] == sum(
        sum(on_disk(str(tree[k]))) for k in ("a0", "a1", "b0", "bad", "bare")
    )
    assert data["total"]["size"] == human_size(data["total"]["bytes"])


def test_status_and_unknown_groups(tree, outputs, db_url, invoke_db):
    synced(tree, outputs, db_url)
    by_status = {g["group"]: g["count"] for g in du_json(invoke_db, "--by", "status")["groups"]}
    assert by_status == {"valid": 3, "invalid": 1, "missing": 1}
    by_exp = {g["group"]: g["count"] for g in du_json(invoke_db)["groups"]}
    assert by_exp == {"exp_a": 2, "exp_b": 1, None: 2}  # invalid and missing rows know no name


def test_table_lists_groups_then_the_total(tree, outputs, db_url, invoke_db):
    synced(tree, outputs, db_url)
    data = du_json(invoke_db, "--by", "run")
    result = invoke_db("du", "--by", "run")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0].split() == ["RUN", "CHECKPOINTS", "SIZE"]
    # Run folders relative to the working directory (the tests run in tmp_path).
    assert [line.split()[0] for line in lines[1:-1]] == [
        os.path.relpath(g["group"]) for g in data["groups"]
    ]
    assert [line.split()[1:] for line in lines[1:-1]] == [
        [str(g["count"]), g["size"]] for g in data["groups"]
    ]
    assert lines[-1].split() == ["total", "5", data["total"]["size"]]


def test_roots_select_the_checkpoints_below_them(tree, outputs, db_url, invoke_db):
    synced(tree, outputs, db_url)
    exp_b = tree["b0"].parent.parent
    data = du_json(invoke_db, str(exp_b), "--by", "status")
    assert data["roots"] == [str(exp_b)]
    assert {g["group"]: g["count"] for g in data["groups"]} == {"valid": 1, "invalid": 1}
    assert data["total"]["bytes"] == sum(on_disk(str(tree["b0"]))) + sum(on_disk(str(tree["bad"])))
    # Through a symlinked path (resolved as sync resolves it), and two roots: their union.
    alias = outputs.parent / "b-link"
    os.symlink(exp_b, alias)
    assert du_json(invoke_db, str(alias), "--by", "status")["groups"] == data["groups"]
    both = du_json(invoke_db, str(exp_b), str(tree["a0"].parent.parent))
    assert both["total"] == du_json(invoke_db)["total"]
    # A folder that only shares a prefix with the indexed ones holds nothing.
    (outputs / "exp").mkdir()
    assert du_json(invoke_db, str(outputs / "exp"))["total"]["count"] == 0


def test_other_locations_are_not_counted(tree, outputs, db_url, invoke_db, monkeypatch, tmp_path):
    synced(tree, outputs, db_url)
    mine = du_json(invoke_db)["total"]
    elsewhere = tmp_path / "elsewhere"
    _ckpt(elsewhere / "exp_c" / "epoch-00.ckpt", 50_000, exp_name="exp_c")
    sync([elsewhere], db_url, location="another-host")
    assert du_json(invoke_db)["total"] == mine
    monkeypatch.setenv("CKPT_INDEX_LOCATION", "another-host")
    theirs = du_json(invoke_db)
    assert [(g["group"], g["count"]) for g in theirs["groups"]] == [("exp_c", 1)]
    assert theirs["location"] == "another-host"


def test_python_api(tree, outputs, db_url):
    synced(tree, outputs, db_url)
    usage = ckpt_index.disk_usage(outputs, by="encoder", db=db_url)
    assert usage.roots == (str(outputs.resolve()),)
    assert {g.group: g.count for g in usage.groups} == {"resnet18": 2, "resnet50": 1, None: 2}
    assert usage.total.count == 5 and usage.total.bytes == sum(g.bytes for g in usage.groups)
    assert usage.to_dict()["groups"][0] == usage.groups[0].to_dict()
    with pytest.raises(ValueError, match="--by takes one of"):
        ckpt_index.disk_usage(by="architecture", db=db_url)


def test_du_reads_only(tree, outputs, db_url, invoke_db):
    # No index: a usage error, and none is made.
    result = invoke_db("du")
    assert result.exit_code == 2
    assert "no index" in result.output or "no ckpt-index schema" in result.output
    if db_url.startswith("sqlite"):
        assert not Path(db_url.removeprefix("sqlite:///")).exists()
    else:
        engine = create_engine(db_url)
        try:
            assert inspect(engine).get_table_names() == []
        finally:
            engine.dispose()
    # An index is left as it was, to the byte.
    synced(tree, outputs, db_url)
    if db_url.startswith("sqlite"):
        files = sorted(Path(db_url.removeprefix("sqlite:///")).parent.glob("index.db*"))
        before = {f: (f.stat().st_mtime_ns, f.read_bytes()) for f in files}
        assert invoke_db("du", "--by", "run").exit_code == 0
        after = sorted(Path(db_url.removeprefix("sqlite:///")).parent.glob("index.db*"))
        assert after == files
        assert {f: (f.stat().st_mtime_ns, f.read_bytes()) for f in files} == before


def test_usage_errors(invoke_db, outputs):
    result = invoke_db("du", "--by", "architecture")
    assert result.exit_code == 2 and "'architecture' is not one of" in result.output
    result = invoke_db("du", str(outputs / "missing"))
    assert result.exit_code == 2 and "does not exist" in result.output
