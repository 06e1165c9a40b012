"""Shell completion through click's own machinery, run as the shell runs it: the real
``ckpt-index`` in a subprocess with ``_CKPT_INDEX_COMPLETE=bash_complete``, COMP_WORDS and
COMP_CWORD, against a synced index (both backends), a missing one and a broken one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ckpt_index.cli import cli

CKPT_INDEX = Path(sys.executable).parent / "ckpt-index"


def complete(*words: str, cwd: Path, env: dict[str, str] | None = None) -> list[str]:
    """What bash would be offered for the last of ``words`` (the word being typed)."""
    line = ["ckpt-index", *words]
    environ = {k: v for k, v in os.environ.items() if k != "CKPT_INDEX_DB"}
    environ.update(env or {})
    environ.update(
        _CKPT_INDEX_COMPLETE="bash_complete",
        COMP_WORDS=" ".join(line),
        COMP_CWORD=str(len(line) - 1),
    )
    done = subprocess.run(
        [str(CKPT_INDEX)], env=environ, cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    # bash_complete prints "type,value" per line; nothing to offer is one empty line.
    return [line.partition(",")[2] for line in done.stdout.splitlines() if line]


@pytest.fixture
def demo_index(invoke_db, db_url: str, tmp_path: Path) -> str:
    demo = tmp_path / "demo"
    assert invoke_db("demo", str(demo)).exit_code == 0
    assert invoke_db("sync", str(demo)).exit_code == 0
    return db_url


def test_encoders_experiments_and_metrics_come_from_the_index(
    demo_index: str, tmp_path: Path
) -> None:
    db = ["--db", demo_index]
    assert complete("query", *db, "--encoder", "", cwd=tmp_path) == [
        "mobilenetv3_small_050",
        "resnet18",
        "resnet50",
    ]
    assert complete("query", *db, "--encoder", "resnet1", cwd=tmp_path) == ["resnet18"]
    assert complete("query", *db, "--architecture", "", cwd=tmp_path) == ["craft", "dbnet", "pan"]
    exps = complete("query", *db, "--exp", "ocr_lr_", cwd=tmp_path)
    assert exps == [
        "ocr_lr_sweep-dbnet-mobilenetv3_small_050_finetuning_20251003_033800",
        "ocr_lr_sweep-pan-resnet18_training_20251001_231100",
    ]
    metrics = complete("query", *db, "--best-by", "", cwd=tmp_path)
    assert {"hmean", "val/hmean", "val/loss", "validation_loss"} <= set(metrics)
    assert complete("query", *db, "--best-by", "val/h", cwd=tmp_path) == ["val/hmean"]
    assert complete("query", *db, "--best-by", "val/loss:", cwd=tmp_path) == [
        "val/loss:max",
        "val/loss:min",
    ]
    sort_keys = complete("query", *db, "--sort", "", cwd=tmp_path)
    assert {"epoch", "hmean", "val/loss", "exp_name"} <= set(sort_keys)
    assert complete("query", *db, "--sort", "epoch:d", cwd=tmp_path) == ["epoch:desc"]


def test_the_index_is_found_as_the_command_would_find_it(invoke, db_path: Path, tmp_path) -> None:
    demo = tmp_path / "demo"
    assert invoke("demo", str(demo)).exit_code == 0
    assert invoke("sync", str(demo)).exit_code == 0
    env = {"CKPT_INDEX_DB": str(db_path)}
    assert "resnet50" in complete("query", "--encoder", "", cwd=tmp_path, env=env)
    # ./ckpt_index.db, the default, when neither --db nor $CKPT_INDEX_DB is given.
    db_path.rename(tmp_path / "ckpt_index.db")
    assert "resnet50" in complete("query", "--encoder", "", cwd=tmp_path)


def test_completing_never_creates_nor_changes_an_index(invoke, db_path: Path, tmp_path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert complete("query", "--encoder", "", cwd=elsewhere) == []
    assert complete("query", "--db", "nodir/x.db", "--exp", "", cwd=elsewhere) == []
    assert list(elsewhere.iterdir()) == []

    demo = tmp_path / "demo"
    assert invoke("demo", str(demo)).exit_code == 0
    assert invoke("sync", str(demo)).exit_code == 0
    before = (db_path.read_bytes(), db_path.stat().st_mtime_ns)
    assert complete("query", "--db", str(db_path), "--best-by", "", cwd=elsewhere)
    assert (db_path.read_bytes(), db_path.stat().st_mtime_ns) == before
    assert sorted(p.name for p in db_path.parent.glob("index.db*")) == ["index.db"]


def test_a_broken_index_completes_nothing_without_a_traceback(tmp_path: Path) -> None:
    broken = tmp_path / "broken.db"
    broken.write_bytes(b"not a database at all" * 100)
    assert complete("query", "--db", str(broken), "--encoder", "", cwd=tmp_path) == []
    # Fixed lists still complete: the canonical metrics, the usual sort fields.
    assert "hmean" in complete("query", "--db", str(broken), "--best-by", "", cwd=tmp_path)
    url = "postgresql+psycopg://nobody@127.0.0.1:1/none"
    assert complete("query", "--db", url, "--exp", "", cwd=tmp_path) == []


def test_commands_and_options_complete_too(tmp_path: Path) -> None:
    assert {"query", "sync", "validate"} <= set(complete("", cwd=tmp_path))
    assert complete("query", "--enc", cwd=tmp_path) == ["--encoder"]
    assert complete("query", "--phase", "", cwd=tmp_path) == [
        "training",
        "validation",
        "finetuning",
    ]


def test_the_callbacks_are_on_the_options() -> None:
    options = {o.name: o for o in cli.commands["query"].params}
    for name in ("best_by", "sort", "encoder", "architecture", "exp"):
        assert options[name]._custom_shell_complete is not None, name
