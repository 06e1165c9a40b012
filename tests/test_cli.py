"""The command line as a whole: help texts, import cost, entry points, show, validate, stats, demo,
and the Python API (the same operations, the same --db rule, and never torch, lightning, wandb or
pandas on import)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from helpers.checkpoints import write_checkpoint
from helpers.sidecars import seed_document
from sqlalchemy.engine import make_url

import ckpt_index
from ckpt_index.cli import cli

HEAVY = ("torch", "lightning", "wandb", "pandas")
VENV_BIN = Path(sys.executable).parent


def _commands(group: click.Group, prefix: tuple[str, ...] = ()):
    yield prefix, group
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from _commands(command, prefix + (name,))
        else:
            yield prefix + (name,), command


COMMANDS = list(_commands(cli))


def test_every_expected_command_exists() -> None:
    names = {" ".join(path) for path, _ in COMMANDS}
    expected = {
        "",
        "sync",
        "query",
        "show",
        "validate",
        "sql",
        "stats",
        "db",
        "db upgrade",
        "db downgrade",
        "db current",
        "db history",
        "demo",
    }
    assert expected <= names


@pytest.mark.parametrize(
    "path, command", COMMANDS, ids=[" ".join(p) or "ckpt-index" for p, _ in COMMANDS]
)
def test_help_has_example(path, command) -> None:
    assert command.help and "Example:" in command.help
    result = CliRunner().invoke(cli, [*path, "--help"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "Example:" in result.stdout
    assert result.stdout.startswith("Usage: ")


# --------------------------------------------------------------------------------------------
# Import cost and entry points


def _run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CKPT_INDEX_DB"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "statement",
    ["import ckpt_index", "import ckpt_index.cli", "from ckpt_index.cli import cli, main"],
)
def test_import_leaves_heavy_modules_out(tmp_path, statement) -> None:
    proc = _run_python(
        f"""
        import sys
        {statement}
        print(sorted(m for m in {HEAVY!r} if m in sys.modules))
    """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_commands_leave_heavy_modules_out(tmp_path, outputs, db_path) -> None:
    """Not only the import: running the everyday commands loads none of them either."""
    write_checkpoint(outputs / "e/a.ckpt", **{"metrics.hmean": 0.9})
    write_checkpoint(outputs / "e/b.ckpt", **{"metrics.hmean": 0.8})
    proc = _run_python(
        f"""
        import sys
        from click.testing import CliRunner
        from ckpt_index.cli import cli
        db = {str(db_path)!r}
        runner = CliRunner()
        for args in (["sync", {str(outputs)!r}, "--db", db],
                     ["query", "--best-by", "hmean", "--format", "json", "--db", db],
                     ["query", "--where", "hmean > 0.5", "--db", db],
                     ["show", {str(outputs / "e/a.ckpt")!r}, "--db", db],
                     ["stats", "--db", db],
                     ["sql", "SELECT count(*) FROM checkpoints", "--db", db],
                     ["validate", {str(outputs)!r}],
                     ["--help"]):
            result = runner.invoke(cli, args)
            assert result.exit_code == 0, (args, result.output, result.exception)
        print(sorted(m for m in {HEAVY!r} if m in sys.modules))
    """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_python_m_ckpt_index(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ckpt_index", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout and "query" in proc.stdout and "Example:" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "ckpt_index", "--version"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0
    assert ckpt_index.__version__ in proc.stdout


def test_console_script(tmp_path, outputs) -> None:
    script = VENV_BIN / "ckpt-index"
    assert script.exists(), "the ckpt-index console script is not installed"
    proc = subprocess.run(
        [str(script), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: ckpt-index")
    # And a real round trip through the installed script.
    ckpt = write_checkpoint(
        outputs / "exp/checkpoints/epoch-01_step-000010.ckpt", **{"metrics.hmean": 0.77}
    )
    db = tmp_path / "script.db"
    proc = subprocess.run(
        [str(script), "sync", str(outputs), "--db", str(db)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run(
        [str(script), "query", "--best-by", "hmean", "--format", "paths", "--db", str(db)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(ckpt)
    proc = subprocess.run(
        [str(script), "query", "--encoder", "nope", "--db", str(db)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stdout == "" and proc.stderr.strip()


# --------------------------------------------------------------------------------------------
# show


def test_show_prints_record_with_metadata(outputs, invoke_db, tmp_path) -> None:
    ckpt = write_checkpoint(
        outputs / "exp/checkpoints/epoch-10_step-005420.ckpt",
        **{
            "metrics.hmean": 0.91,
            "metrics.additional_metrics": {"val/loss": 0.02},
            "exp_name": "shown",
            "model.encoder.model_name": "resnet18",
        },
    )
    write_checkpoint(outputs / "exp/checkpoints/other.ckpt")
    assert invoke_db("sync", str(outputs)).exit_code == 0
    for arg in (str(ckpt), os.path.relpath(ckpt, tmp_path)):  # cwd is tmp_path
        result = invoke_db("show", arg)
        assert result.exit_code == 0, result.output
        record = json.loads(result.stdout)
        assert record["checkpoint_path"] == str(ckpt)
        assert record["exp_name"] == "shown"
        assert record["encoder"] == "resnet18"
        assert record["hmean"] == 0.91
        assert record["metrics"]["val/loss"] == 0.02
        meta = record["metadata"]
        assert meta["schema_version"] == "1.0"
        assert meta["exp_name"] == "shown"
        assert meta["model"]["encoder"]["model_name"] == "resnet18"
        assert meta["training"]["epoch"] == 10
        assert meta["metrics"]["additional_metrics"] == {"val/loss": 0.02}


def test_show_unknown_checkpoint_exits_1(outputs, invoke_db) -> None:
    write_checkpoint(outputs / "exp/a.ckpt")
    assert invoke_db("sync", str(outputs)).exit_code == 0
    result = invoke_db("show", str(outputs / "exp/missing.ckpt"))
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "not in the index" in result.stderr


def test_show_checkpoint_without_metadata(outputs, invoke_db) -> None:
    ckpt = write_checkpoint(outputs / "exp/bare.ckpt")
    assert invoke_db("sync", "--no-infer", str(outputs)).exit_code == 0
    result = invoke_db("show", str(ckpt))
    assert result.exit_code == 0
    record = json.loads(result.stdout)
    assert record["checkpoint_path"] == str(ckpt)
    assert record["metadata"] is None
    assert record["status"] == "missing"


def test_show_unreadable_checkpoint_says_why(outputs, invoke_db) -> None:
    ckpt = write_checkpoint(outputs / "exp/bare.ckpt")
    ckpt.write_bytes(b"placeholder\n")  # not a zip
    assert invoke_db("sync", str(outputs)).exit_code == 0
    record = json.loads(invoke_db("show", str(ckpt)).stdout)
    assert record["status"] == "unreadable"
    assert record["error"] and "zip" in record["error"].lower()


# --------------------------------------------------------------------------------------------
# validate


@pytest.fixture
def mixed_tree(outputs: Path) -> dict[str, Path]:
    valid = write_checkpoint(outputs / "a/checkpoints/good.ckpt", seed_document())
    out_of_range = write_checkpoint(
        outputs / "a/checkpoints/bad_hmean.ckpt", **{"metrics.hmean": 1.7}
    )
    broken_yaml = write_checkpoint(outputs / "b/checkpoints/broken.ckpt", "training: [unclosed\n")
    bare = write_checkpoint(outputs / "b/checkpoints/bare.ckpt")
    orphan = write_checkpoint(
        outputs / "c/checkpoints/orphan.ckpt", seed_document(), ckpt_file=False
    )
    return {
        "valid": valid.with_name("good.metadata.yaml"),
        "out_of_range": out_of_range.with_name("bad_hmean.metadata.yaml"),
        "broken_yaml": broken_yaml.with_name("broken.metadata.yaml"),
        "bare": bare,
        "orphan": orphan.with_name("orphan.metadata.yaml"),
    }


def _no_database_created(tmp_path: Path, db_path: Path) -> None:
    assert not db_path.exists()
    assert not (tmp_path / "ckpt_index.db").exists()
    assert not list(tmp_path.rglob("*.db"))


def test_validate_text(outputs, invoke, mixed_tree, tmp_path, db_path) -> None:
    result = invoke("validate", str(outputs))
    assert result.exit_code == 1
    out = result.stdout
    lines = out.splitlines()
    (bad,) = [line for line in lines if str(mixed_tree["out_of_range"]) in line]
    assert bad.startswith("invalid") and "hmean" in bad
    (broken,) = [line for line in lines if str(mixed_tree["broken_yaml"]) in line]
    assert broken.startswith("invalid") and "line" in broken  # the parse error says where
    (bare,) = [line for line in lines if str(mixed_tree["bare"]) in line]
    assert bare.startswith("without sidecar: ")
    orphan = [line for line in lines if str(mixed_tree["orphan"]) in line]
    assert any("orphan" in line for line in orphan)
    # Valid files need no line.
    assert not [line for line in lines if str(mixed_tree["valid"]) in line]
    assert "1 without sidecar" in lines[-1]
    assert "2 invalid" in lines[-1]
    assert "1 orphaned" in lines[-1]
    _no_database_created(tmp_path, db_path)


def test_validate_json(outputs, invoke, mixed_tree, tmp_path, db_path) -> None:
    result = invoke("validate", str(outputs), "--format", "json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["root"] == str(outputs)
    assert sorted(report["valid"]) == sorted([str(mixed_tree["valid"]), str(mixed_tree["orphan"])])
    invalid = {item["path"]: item["reason"] for item in report["invalid"]}
    assert set(invalid) == {str(mixed_tree["out_of_range"]), str(mixed_tree["broken_yaml"])}
    assert "metrics.hmean" in invalid[str(mixed_tree["out_of_range"])]
    assert all(reason and "\n" not in reason for reason in invalid.values())
    assert report["without_sidecar"] == [str(mixed_tree["bare"])]
    assert report["orphaned"] == [str(mixed_tree["orphan"])]
    assert report["counts"] == {
        "valid": 2,
        "invalid": 2,
        "without_sidecar": 1,
        "orphaned": 1,
        "unreadable": 0,
        "stale": 0,
        "unsafe_globals": 0,
        "dangling_links": 0,
    }
    _no_database_created(tmp_path, db_path)


def test_validate_reads_checkpoints_in_workers(outputs, invoke, tmp_path, db_path) -> None:
    import os
    import zipfile

    good = write_checkpoint(outputs / "a/good.ckpt", seed_document())
    truncated = write_checkpoint(outputs / "a/truncated.ckpt", seed_document())
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) - 30])
    stale = write_checkpoint(outputs / "a/stale.ckpt", seed_document())
    sidecar = stale.with_name("stale.metadata.yaml")
    os.utime(sidecar, (1_600_000_000, 1_600_000_000))  # written long before its checkpoint
    unsafe = outputs / "b/unsafe.ckpt"
    unsafe.parent.mkdir(parents=True)
    with zipfile.ZipFile(unsafe, "w") as archive:  # hparams = argparse.Namespace(), by hand
        payload = (
            b"\x80\x02}q\x00X\x10\x00\x00\x00hyper_parametersq\x01"
            b"cargparse\nNamespace\nq\x02)\x81q\x03s."
        )
        archive.writestr("archive/data.pkl", payload)

    result = invoke("validate", str(outputs), "--format", "json")
    assert result.exit_code == 1  # the truncated checkpoint
    report = json.loads(result.stdout)
    assert [item["path"] for item in report["unreadable"]] == [str(truncated)]
    assert report["stale"] == [str(sidecar)]
    assert report["unsafe_globals"] == {str(unsafe): ["argparse.Namespace"]}
    assert str(good) not in report["unsafe_globals"]
    text = invoke("validate", str(outputs)).stdout
    assert f"unreadable: {truncated}: " in text
    assert f"needs weights_only=False: {unsafe}: argparse.Namespace" in text
    assert "1 unreadable; " in text and "1 stale, 1 with unsafe globals" in text
    quick = json.loads(
        invoke("validate", str(outputs), "--no-checkpoints", "--format", "json").stdout
    )
    assert (
        quick["unreadable"] == []
        and quick["unsafe_globals"] == {}
        and quick["stale"] == [str(sidecar)]
    )
    _no_database_created(tmp_path, db_path)


def test_show_reads_unsafe_globals_when_the_index_does_not_know_them(outputs, invoke_db) -> None:
    ckpt = write_checkpoint(outputs / "exp/a.ckpt", seed_document())
    assert invoke_db("sync", str(outputs)).exit_code == 0
    record = json.loads(invoke_db("show", str(ckpt)).stdout)
    assert (
        record["unsafe_globals"] == [] and record["stale"] is False and record["scan_error"] is None
    )
    assert invoke_db("sync", str(outputs), "--inspect").exit_code == 0
    assert json.loads(invoke_db("show", str(ckpt)).stdout)["unsafe_globals"] == []


def test_validate_all_valid_exits_0(outputs, invoke, tmp_path, db_path) -> None:
    write_checkpoint(outputs / "a/x.ckpt", seed_document())
    write_checkpoint(outputs / "a/y.ckpt", **{"metrics.hmean": None})  # a warning, not an error
    write_checkpoint(outputs / "a/bare.ckpt")  # without metadata is not invalid
    result = invoke("validate", str(outputs))
    assert result.exit_code == 0, result.output
    assert "warning" in result.stdout and "hmean" in result.stdout
    assert "2 valid sidecars, 0 invalid" in result.stdout
    result = invoke("validate", str(outputs), "--format", "json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["counts"]["invalid"] == 0
    _no_database_created(tmp_path, db_path)


def test_validate_missing_root(invoke, tmp_path) -> None:
    result = invoke("validate", str(tmp_path / "nowhere"))
    assert result.exit_code != 0
    assert "nowhere" in result.stderr


def test_validate_loads_no_database_code(outputs, tmp_path) -> None:
    """Validating YAML files and checkpoints needs no index: neither the library call nor the
    command (its errors included) loads SQLAlchemy."""
    write_checkpoint(outputs / "a/x.ckpt", seed_document())
    write_checkpoint(outputs / "a/bare.ckpt")
    proc = _run_python(
        f"""
        import sys
        from click.testing import CliRunner
        from ckpt_index.tools.validate import validate_tree
        from ckpt_index.cli import cli
        assert validate_tree({str(outputs)!r}, checkpoints=False).ok
        assert validate_tree({str(outputs)!r}).ok
        assert CliRunner().invoke(cli, ["validate", {str(outputs)!r}]).exit_code == 0
        assert CliRunner().invoke(cli, ["validate", {str(tmp_path / "nowhere")!r}]).exit_code == 1
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("sqlalchemy", "alembic")))
    """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


# --------------------------------------------------------------------------------------------
# stats


@pytest.fixture
def stats_tree(outputs: Path, invoke_db) -> None:
    def put(rel, **kw):
        changes = {"metrics.additional_metrics": {"val/loss": 0.05}}
        changes.update(
            {
                {
                    "hmean": "metrics.hmean",
                    "exp": "exp_name",
                    "encoder": "model.encoder.model_name",
                }.get(k, k): v
                for k, v in kw.items()
            }
        )
        return write_checkpoint(outputs / rel, **changes)

    put("e1/a.ckpt", exp="e1", encoder="resnet50", hmean=0.7)
    put("e1/b.ckpt", exp="e1", encoder="resnet50", hmean=0.8)
    put("e2/a.ckpt", exp="e2", encoder="resnet18", hmean=0.6)
    put("e2/orphan.ckpt", exp="e2", encoder="resnet18", hmean=0.99, ckpt_file=False)
    put("e2/invalid.ckpt", hmean=1.5)
    write_checkpoint(outputs / "e3/bare.ckpt")
    assert invoke_db("sync", "--no-infer", str(outputs)).exit_code == 0


def test_stats_json(invoke_db, stats_tree, db_url) -> None:
    result = invoke_db("stats", "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["checkpoints"] == 6
    assert data["valid"] == 4  # the orphan's sidecar is valid
    assert data["invalid"] == 1
    assert data["missing"] == 1
    assert data["orphaned_sidecars"] == 1
    assert data["experiments"] == 2
    # precision, recall, hmean, validation_loss (seed values) and val/loss
    assert data["metric_names"] == 5
    assert data["best_hmean"] == 0.8  # the orphan's 0.99 is hidden like in queries
    assert data["encoders"] == {"resnet50": 2, "resnet18": 1}
    assert data["architectures"] == {"dbnet": 3}
    assert data["revision"]
    shown, expected = make_url(data["database"]), make_url(db_url)
    assert (shown.get_backend_name(), shown.database) == (
        expected.get_backend_name(),
        expected.database,
    )


def test_stats_text(invoke_db, stats_tree) -> None:
    result = invoke_db("stats")
    assert result.exit_code == 0
    values = {}
    for line in result.stdout.splitlines():
        key, _, value = line.partition(":")
        values[key.strip()] = value.strip()
    assert values["checkpoints"] == "6"
    assert values["valid"] == "4"
    assert values["invalid"] == "1"
    assert values["missing"] == "1"
    assert values["orphaned_sidecars"] == "1"
    assert values["encoders"] == "resnet50 2, resnet18 1"


def test_stats_follows_sync(outputs, invoke_db, stats_tree) -> None:
    (outputs / "e1/b.ckpt").unlink()
    (outputs / "e1/b.metadata.yaml").unlink()
    assert invoke_db("sync", str(outputs)).exit_code == 0
    data = json.loads(invoke_db("stats", "--format", "json").stdout)
    assert data["checkpoints"] == 5
    assert data["best_hmean"] == 0.7
    assert data["encoders"] == {"resnet18": 1, "resnet50": 1}


# --------------------------------------------------------------------------------------------
# demo


def test_demo_then_sync_and_query(invoke_db, tmp_path) -> None:
    demo = tmp_path / "demo_outputs"
    result = invoke_db("demo", str(demo))
    assert result.exit_code == 0, result.output
    ckpts = sorted(demo.rglob("*.ckpt"))
    assert len(ckpts) == 64
    assert f"wrote {len(ckpts)}" in result.stdout
    sync = invoke_db("sync", str(demo), "--format", "json")
    assert sync.exit_code == 0
    summary = json.loads(sync.stdout)
    # The sidecar-less checkpoint is filled from the checkpoint itself (a tiny real zip).
    assert (summary["invalid"], summary["inferred"], summary["unreadable"]) == (1, 1, 0)
    rows = json.loads(invoke_db("query", "--format", "json").stdout)
    (inferred,) = [r for r in rows if r["status"] == "inferred"]
    assert inferred["source"] == "checkpoint" and inferred["hmean"] is not None
    (best,) = json.loads(invoke_db("query", "--best-by", "hmean", "--format", "json").stdout)
    assert best["hmean"] == max(r["hmean"] for r in rows if r["hmean"] is not None)
    assert Path(best["checkpoint_path"]).exists()
    table = invoke_db("query", "--best-by", "hmean")
    assert table.exit_code == 0 and len(table.stdout.splitlines()) == 2


def test_demo_is_deterministic(invoke, tmp_path) -> None:
    for name in ("one", "two"):
        assert invoke("demo", str(tmp_path / name), "--seed", "3").exit_code == 0
    one = {
        p.relative_to(tmp_path / "one"): p.read_bytes()
        for p in (tmp_path / "one").rglob("*")
        if p.is_file()
    }
    two = {
        p.relative_to(tmp_path / "two"): p.read_bytes()
        for p in (tmp_path / "two").rglob("*")
        if p.is_file()
    }
    assert one.keys() == two.keys()
    assert one == two


def test_demo_into_non_empty_directory_fails(invoke, tmp_path) -> None:
    target = tmp_path / "busy"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    result = invoke("demo", str(target))
    assert result.exit_code == 1
    assert "not empty" in result.stderr
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    assert (target / "keep.txt").read_text() == "mine"


def test_demo_into_empty_existing_directory(invoke, tmp_path) -> None:
    target = tmp_path / "empty"
    target.mkdir()
    assert invoke("demo", str(target)).exit_code == 0
    assert list(target.rglob("*.ckpt"))


# --------------------------------------------------------------------------------------------
# The Python API


@pytest.fixture
def api_tree(outputs: Path) -> dict[str, Path]:
    return {
        "a": write_checkpoint(
            outputs / "exp_a/checkpoints/epoch-01_step-000100.ckpt",
            **{
                "exp_name": "exp_a",
                "metrics.hmean": 0.7,
                "training.epoch": 1,
                "metrics.additional_metrics": {"val/loss": 0.05},
            },
        ),
        "b": write_checkpoint(
            outputs / "exp_b/checkpoints/epoch-02_step-000200.ckpt",
            **{
                "exp_name": "exp_b",
                "metrics.hmean": 0.9,
                "training.epoch": 2,
                "model.encoder.model_name": "resnet18",
                "metrics.additional_metrics": {"val/loss": 0.03},
            },
        ),
        "c": write_checkpoint(
            outputs / "exp_b/checkpoints/epoch-03_step-000300.ckpt",
            **{
                "exp_name": "exp_b",
                "metrics.hmean": 0.8,
                "training.epoch": 3,
                "model.encoder.model_name": "resnet18",
                "metrics.additional_metrics": {"val/loss": 0.01},
            },
        ),
    }


def test_api_names_are_the_functions(tmp_path) -> None:
    """``ckpt_index.sync_index`` and ``ckpt_index.query_index`` are the API functions, also once
    the submodules ckpt_index.sync and ckpt_index.query have been imported (as the CLI does)."""
    proc = _run_python(
        """
        import ckpt_index
        from ckpt_index.query.spec import QuerySpec   # binds the submodule on the package
        import ckpt_index.sync.roots
        print(callable(ckpt_index.sync_index), callable(ckpt_index.query_index))
    """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True"]
    assert callable(ckpt_index.sync_index) and callable(ckpt_index.query_index)


def test_api_fresh_process(tmp_path, outputs, db_path, api_tree) -> None:
    """The notebook path, first thing in a fresh interpreter."""
    proc = _run_python(
        f"""
        import ckpt_index
        summary = ckpt_index.sync_index({str(outputs)!r}, db={str(db_path)!r})
        (best,) = ckpt_index.query_index(db={str(db_path)!r}, best_by="hmean")
        print(summary.valid, best["checkpoint_path"])
    """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["3", str(api_tree["b"])]


def test_api_sync_and_query(outputs, db_url, api_tree, invoke_db) -> None:
    summary = ckpt_index.sync_index(outputs, db=db_url)
    assert (summary.checkpoints, summary.valid, summary.added) == (3, 3, 3)
    again = ckpt_index.sync_index([outputs], db=str(db_url))  # a list of roots and a str db too
    assert (again.checkpoints, again.added, again.removed) == (3, 0, 0)
    (best,) = ckpt_index.query_index(db=db_url, best_by="hmean")
    assert best["checkpoint_path"] == str(api_tree["b"])


def test_api_query_spec_fields(outputs, db_url, api_tree, invoke_db) -> None:
    # Through ckpt_index.api, so that this runs whatever the package attributes are.
    from ckpt_index.api import query, sync

    sync(outputs, db=db_url)
    (best,) = query(db=db_url, best_by="hmean")
    assert best["checkpoint_path"] == str(api_tree["b"])
    (best_loss,) = query(db=db_url, best_by="val/loss")
    assert best_loss["checkpoint_path"] == str(api_tree["c"])
    rows = query(db=db_url, encoder="resnet18", sort=["epoch:desc"])
    assert [r["checkpoint_path"] for r in rows] == [str(api_tree["c"]), str(api_tree["b"])]
    grouped = query(db=db_url, best_by="hmean", group_by="exp_name")
    assert {r["exp_name"]: r["checkpoint_path"] for r in grouped} == {
        "exp_a": str(api_tree["a"]),
        "exp_b": str(api_tree["b"]),
    }
    # The same records as the CLI prints.
    cli_rows = json.loads(invoke_db("query", "--best-by", "hmean", "--format", "json").stdout)
    assert cli_rows == [best]


def test_api_query_errors(outputs, db_url, api_tree) -> None:
    from ckpt_index.api import query, sync
    from ckpt_index.query.spec import QueryError, WhereError

    sync(outputs, db=db_url)
    with pytest.raises(WhereError):
        query(db=db_url, where="hmean >")
    with pytest.raises(QueryError):
        query(db=db_url, group_by="exp_name")
    assert query(db=db_url, encoder="nope") == []


def test_api_connect_plain_sqlite3(outputs, db_path, api_tree, invoke) -> None:
    assert invoke("sync", str(outputs)).exit_code == 0
    conn = sqlite3.connect(db_path)
    try:
        rows = conn.execute(
            "SELECT checkpoint_path, hmean FROM checkpoints ORDER BY hmean DESC"
        ).fetchall()
        assert rows[0] == (str(api_tree["b"]), 0.9)
        metrics = conn.execute(
            "SELECT c.checkpoint_path, m.value FROM checkpoint_metrics m "
            "JOIN checkpoints c ON c.id = m.checkpoint_id WHERE m.name = 'val/loss' "
            "ORDER BY m.value"
        ).fetchall()
        assert metrics[0] == (str(api_tree["c"]), 0.01)
        flat = conn.execute("SELECT count(*) FROM checkpoint_metrics_flat WHERE metric = 'hmean'")
        assert flat.fetchone()[0] == 3
    finally:
        conn.close()


def test_api_connect_is_read_only(outputs, db_url, api_tree, invoke_db) -> None:
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    assert invoke_db("sync", str(outputs)).exit_code == 0
    with ckpt_index.connect(db_url) as conn:
        assert conn.execute(text("SELECT count(*) FROM checkpoints")).scalar() == 3
        with pytest.raises(DBAPIError):
            conn.execute(text("DELETE FROM checkpoints"))
    with ckpt_index.connect(db_url) as conn:  # the refused DELETE was rolled back
        assert conn.execute(text("SELECT count(*) FROM checkpoints")).scalar() == 3


def test_api_connect_with_pandas(outputs, db_url, api_tree, invoke_db) -> None:
    pd = pytest.importorskip("pandas")
    assert invoke_db("sync", str(outputs)).exit_code == 0
    with ckpt_index.connect(db_url) as conn:
        frame = pd.read_sql(
            "SELECT exp_name, encoder, epoch, hmean FROM checkpoints ORDER BY hmean DESC", conn
        )
        assert list(frame.columns) == ["exp_name", "encoder", "epoch", "hmean"]
        assert frame["hmean"].tolist() == [0.9, 0.8, 0.7]
        flat = pd.read_sql("SELECT * FROM checkpoint_metrics_flat", conn)
        wide = flat.pivot(index="checkpoint_path", columns="metric", values="value")
        assert wide.loc[str(api_tree["c"]), "val/loss"] == 0.01
        assert {"hmean", "val/loss", "precision"} <= set(wide.columns)
        assert len(pd.read_sql_table("checkpoints", conn)) == 3
    # And on the read-only engine, as the README shows for notebooks.
    engine = ckpt_index.read_only_engine(db_url)
    try:
        assert len(pd.read_sql("SELECT * FROM checkpoints", engine)) == 3
    finally:
        engine.dispose()


def test_api_query_missing_index_does_not_create_it(db_path) -> None:
    from ckpt_index.api import query

    with pytest.raises(Exception) as info:
        query(db=db_path, best_by="hmean")
    assert "sync" in str(info.value)
    assert not db_path.exists()
