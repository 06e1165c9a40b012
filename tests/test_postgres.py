"""PostgreSQL as the shared index (issue 4): schema, migrations, every command, the API and the
training callback against the real server, each test in a schema of its own (``pg_url``).

The behaviour tests that do not depend on the backend (sync, query, ``--where``, sql, stats, the
API) run on both backends in their own modules through ``db_url``; this module holds what is
PostgreSQL's own: revisions on a real server, ``CKPT_INDEX_DB`` pointing at it, the READ ONLY
transaction of ``ckpt-index sql``, a server whose collation is not bytewise, and the callback.
"""

from __future__ import annotations

import json
import os
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from helpers.checkpoints import write_checkpoint
from helpers.postgres import PG_ADMIN_URL, pg_url_with_schema
from helpers.sidecars import seed_document
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

import ckpt_index
from ckpt_index import api
from ckpt_index.cli import cli
from ckpt_index.index import migrate
from ckpt_index.index.engine import create_index_engine, open_engine, run_write
from ckpt_index.index.migrate import (
    HEAD_REVISION,
    SchemaTooNewError,
    current_revision,
    downgrade,
    upgrade,
)
from ckpt_index.index.models import Base
from ckpt_index.index.records import FileState, record_without_metadata
from ckpt_index.index.store import upsert_records
from ckpt_index.index.tables import include_object
from ckpt_index.sidecar.files import sidecar_path_for

TOO_NEW = "9999_from_the_future"
MIGRATIONS = migrate.MIGRATIONS_DIR


# ------------------------------------------------------------------------------------ helpers
def _plain_engine(url: str):
    """An engine that is not ckpt-index's: reads what is really stored, never migrates."""
    return create_engine(url, poolclass=NullPool)


def snapshot(url: str, reader=None) -> dict[str, Any]:
    """Everything a write could change in the test's schema, read around ckpt-index (through
    ``reader``, a pooled engine, when one is given)."""
    engine = reader or _plain_engine(url)
    try:
        with engine.connect() as conn:
            objects = conn.execute(
                text(
                    "SELECT table_type, table_name FROM information_schema.tables "
                    "WHERE table_schema = current_schema() ORDER BY table_name"
                )
            ).all()
            names = {name for _, name in objects}
            columns = conn.execute(
                text(
                    "SELECT table_name, column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
                )
            ).all()
            indexes = conn.execute(
                text(
                    "SELECT indexname, indexdef FROM pg_indexes "
                    "WHERE schemaname = current_schema() ORDER BY indexname"
                )
            ).all()
            state: dict[str, Any] = {"objects": objects, "columns": columns, "indexes": indexes}
            for table, order in (
                ("alembic_version", "version_num"),
                ("checkpoints", "id"),
                ("checkpoint_metrics", "checkpoint_id, name"),
            ):
                if table in names:
                    state[table] = conn.execute(
                        text(f"SELECT * FROM {table} ORDER BY {order}")
                    ).all()
            if "checkpoints_id_seq" in {
                r[0]
                for r in conn.execute(
                    text(
                        "SELECT sequence_name FROM information_schema.sequences "
                        "WHERE sequence_schema = current_schema()"
                    )
                )
            }:
                state["sequence"] = conn.execute(
                    text("SELECT last_value, is_called FROM checkpoints_id_seq")
                ).one()
    finally:
        if reader is None:
            engine.dispose()
    return state


def revision_of(url: str) -> str | None:
    engine = _plain_engine(url)
    try:
        with engine.connect() as conn:
            return current_revision(conn)
    finally:
        engine.dispose()


def stamp(url: str, revision: str) -> None:
    engine = _plain_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
    finally:
        engine.dispose()


def rows_by_path(url: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Every ``checkpoints`` row keyed by (location, path), with its metrics."""
    engine = _plain_engine(url)
    try:
        with engine.connect() as conn:
            rows = {
                (r["location"], r["checkpoint_path"]): {**r, "metrics": {}}
                for r in conn.execute(text("SELECT * FROM checkpoints")).mappings()
            }
            by_id = {row["id"]: row for row in rows.values()}
            for checkpoint_id, name, value in conn.execute(
                text("SELECT checkpoint_id, name, value FROM checkpoint_metrics")
            ):
                by_id[checkpoint_id]["metrics"][name] = value
    finally:
        engine.dispose()
    return rows


def make_tree(outputs: Path, n: int = 3) -> list[Path]:
    return [
        write_checkpoint(
            outputs / f"exp{i}" / "checkpoints" / f"epoch-{i:02d}_step-{i * 100:06d}.ckpt",
            seed_document(),
            **{
                "exp_name": f"exp{i}",
                "metrics.hmean": round(0.5 + i / 10, 2),
                "training.epoch": i,
                "training.global_step": i * 100,
                "metrics.additional_metrics": {"val/loss": round(0.1 - i / 100, 3)},
            },
        )
        for i in range(n)
    ]


def age(root: Path) -> None:
    """Date every file an hour back, out of the racy window: rows keep the real mtimes."""
    hour_ago = time.time() - 3600
    for path in root.rglob("*"):
        if path.is_file():
            os.utime(path, (hour_ago, hour_ago))


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


# --------------------------------------------------------------------------------------------
# Schema and revisions on the server


def test_new_schema_is_created_at_head_in_the_test_schema(pg_url: str) -> None:
    open_engine(pg_url).dispose()
    assert revision_of(pg_url) == HEAD_REVISION
    engine = _plain_engine(pg_url)
    try:
        insp = inspect(engine)
        schema = insp.default_schema_name
        assert schema.startswith("ckpt_test_")  # libpq's search_path, not public
        assert {"checkpoints", "checkpoint_metrics", "alembic_version"} <= set(
            insp.get_table_names()
        )
        assert "checkpoint_metrics_flat" in insp.get_view_names()
        indexed = {
            tuple(ix["column_names"]): ix["unique"] for ix in insp.get_indexes("checkpoints")
        }
        for column in ("hmean", "encoder", "epoch", "exp_name", "architecture"):
            assert (column,) in indexed, indexed
        assert indexed[("location", "checkpoint_path")] is True
        metric_indexes = [
            tuple(ix["column_names"]) for ix in insp.get_indexes("checkpoint_metrics")
        ]
        assert ("name", "value") in metric_indexes
        with engine.connect() as conn:
            public = conn.execute(
                text(
                    "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public' "
                    "AND table_name IN ('checkpoints', 'checkpoint_metrics')"
                )
            ).scalar()
        assert public == 0, "the index leaked into the public schema"
    finally:
        engine.dispose()


def test_models_and_migrations_agree_on_postgres(pg_url: str) -> None:
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    open_engine(pg_url).dispose()
    engine = create_index_engine(pg_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "include_object": include_object}
            )
            assert compare_metadata(context, Base.metadata) == []
        with engine.begin() as conn:
            command.check(migrate.alembic_config(pg_url, conn))
    finally:
        engine.dispose()


def test_sort_by_hmean_reads_the_descending_index_on_postgres(pg_url: str) -> None:
    """``ORDER BY hmean DESC NULLS LAST, checkpoint_path`` (a page sorted by hmean, the default of
    the web page) is read from ``ix_checkpoints_hmean_desc`` in order, with no sort of the table:
    a plain index scanned backwards gives NULLs first, and the first page took 187 ms at 100,000
    rows without it."""
    from ckpt_index.query.spec import QuerySpec, build_query

    records = []
    for i in range(200):
        record = record_without_metadata(
            checkpoint_path=f"/runs/r{i}.ckpt",
            sidecar_path=None,
            ckpt=None,
            sidecar=None,
            error=None,
        )
        record.columns.update(checkpoint_exists=True, hmean=None if i % 7 == 0 else i / 200)
        records.append(record)
    engine = open_engine(pg_url)
    try:
        with engine.begin() as conn:
            upsert_records(conn, records)
            conn.exec_driver_sql("ANALYZE checkpoints")
        stmt = build_query(QuerySpec(sort=("hmean:desc",), limit=50))
        with engine.connect() as conn:
            conn.exec_driver_sql("SET enable_seqscan = off")
            sql = str(stmt.compile(conn, compile_kwargs={"literal_binds": True}))
            plan = "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + sql))
            paths = [r.checkpoint_path for r in conn.execute(stmt)]
    finally:
        engine.dispose()
    assert "ix_checkpoints_hmean_desc" in plan, plan
    assert " Sort " not in plan and "Sort Key" not in plan, plan
    assert paths[:2] == ["/runs/r199.ckpt", "/runs/r198.ckpt"]


def test_every_revision_upgrades_and_downgrades_on_postgres(pg_url: str) -> None:
    from alembic.script import ScriptDirectory

    revisions = [
        r.revision for r in reversed(list(ScriptDirectory(str(MIGRATIONS)).walk_revisions()))
    ]
    assert revisions[-1] == HEAD_REVISION
    engine = create_index_engine(pg_url)
    try:
        previous = "base"
        for revision in revisions:
            upgrade(engine, pg_url, revision)
            assert revision_of(pg_url) == revision
            downgrade(engine, pg_url, previous)
            assert revision_of(pg_url) == (None if previous == "base" else previous)
            upgrade(engine, pg_url, revision)
            previous = revision
        downgrade(engine, pg_url, "base")
    finally:
        engine.dispose()
    state = snapshot(pg_url)
    assert [name for _, name in state["objects"]] == ["alembic_version"]
    assert all("alembic_version" in definition for _, definition in state["indexes"]), state


# Rows as revision 0001 stored them (one row per checkpoint path, no location), written with plain
# SQL in that revision's columns: a valid checkpoint with metrics, an orphaned sidecar, and a
# checkpoint without metadata.
_ROWS_0001 = [
    dict(
        id=1,
        checkpoint_path="/data/outputs/dbnet-resnet50/checkpoints/epoch-10_step-005420.ckpt",
        sidecar_path="/data/outputs/dbnet-resnet50/checkpoints/epoch-10_step-005420.metadata.yaml",
        exp_name="dbnet-resnet50-20251018",
        architecture="dbnet",
        encoder="resnet50",
        encoder_pretrained=True,
        encoder_frozen=False,
        decoder="pan_decoder",
        head="db_head",
        loss="db_loss",
        epoch=10,
        global_step=5420,
        training_phase="training",
        max_epochs=50,
        precision=0.8542,
        recall=0.8321,
        hmean=0.843,
        validation_loss=0.0234,
        monitor="val/hmean",
        mode="max",
        save_top_k=3,
        save_last=True,
        created_at="2025-10-18T14:32:15.123456",
        hydra_config_path="/data/outputs/dbnet-resnet50/.hydra/config.yaml",
        wandb_run_id="abc123def456",
        source="sidecar",
        status="valid",
        error=None,
        warnings=None,
        checkpoint_exists=True,
        ckpt_size=12,
        ckpt_mtime_ns=1_760_000_000_000_000_000,
        sidecar_size=900,
        sidecar_mtime_ns=1_760_000_000_000_000_000,
        metadata_json='{"schema_version":"1.0"}',
        indexed_at="2025-10-18T15:00:00+00:00",
    ),
    dict(
        id=2,
        checkpoint_path="/data/outputs/craft-resnet18/checkpoints/epoch-03_step-000800.ckpt",
        sidecar_path="/data/outputs/craft-resnet18/checkpoints/epoch-03_step-000800.metadata.yaml",
        exp_name="craft-resnet18-20251019",
        architecture="craft",
        encoder="resnet18",
        encoder_pretrained=True,
        encoder_frozen=True,
        epoch=3,
        global_step=800,
        training_phase="finetuning",
        max_epochs=20,
        hmean=0.61,
        created_at="2025-10-19T09:00:00",
        source="sidecar",
        status="valid",
        warnings="metrics.hmean only",
        checkpoint_exists=False,
        sidecar_size=640,
        sidecar_mtime_ns=1_760_100_000_000_000_000,
        metadata_json='{"schema_version":"1.0"}',
        indexed_at="2025-10-19T10:00:00+00:00",
    ),
    dict(
        id=3,
        checkpoint_path="/data/outputs/pan-mobilenet/checkpoints/last.ckpt",
        source="none",
        status="missing",
        checkpoint_exists=True,
        ckpt_size=34,
        ckpt_mtime_ns=1_760_200_000_000_000_000,
        indexed_at="2025-10-20T10:00:00+00:00",
    ),
]
_METRICS_0001 = [
    (1, "hmean", 0.843),
    (1, "precision", 0.8542),
    (1, "recall", 0.8321),
    (1, "val/loss", 0.0234),
    (2, "hmean", 0.61),
]


def make_revision_0001(url: str) -> None:
    """A schema at revision 0001 holding ``_ROWS_0001``, as that release left it."""
    engine = create_index_engine(url)
    try:
        upgrade(engine, url, "head")
        downgrade(engine, url, "0001")
    finally:
        engine.dispose()
    plain = _plain_engine(url)
    try:
        with plain.begin() as conn:
            for row in _ROWS_0001:
                conn.execute(
                    text(
                        f"INSERT INTO checkpoints ({', '.join(row)}) "
                        f"VALUES ({', '.join(':' + k for k in row)})"
                    ),
                    row,
                )
            conn.execute(
                text(
                    "INSERT INTO checkpoint_metrics (checkpoint_id, name, value) "
                    "VALUES (:c, :n, :v)"
                ),
                [dict(c=c, n=n, v=v) for c, n, v in _METRICS_0001],
            )
            # The ids were given explicitly: move the sequence on as 0001's inserts would have.
            conn.execute(text("SELECT setval('checkpoints_id_seq', 3)"))
    finally:
        plain.dispose()
    assert revision_of(url) == "0001"
    assert "location" not in {c for t, c, _ in snapshot(url)["columns"] if t == "checkpoints"}


def _open_engine(url: str, outputs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    open_engine(url).dispose()


def _cli_sync(url: str, outputs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = run("sync", str(outputs), "--db", url)
    assert result.exit_code == 0, result.output


def _cli_db_upgrade(url: str, outputs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = run("db", "upgrade", "--db", url)
    assert result.exit_code == 0, result.output
    assert HEAD_REVISION in result.stdout


def _read_only_engine(url: str, outputs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = ckpt_index.read_only_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM checkpoints")).scalar() == 3
    finally:
        engine.dispose()


def _env_api_sync(url: str, outputs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CKPT_INDEX_DB", url)
    api.sync(outputs)


UPGRADERS: dict[str, Callable[[str, Path, pytest.MonkeyPatch], None]] = {
    "open_engine": _open_engine,
    "cli_sync": _cli_sync,
    "cli_db_upgrade": _cli_db_upgrade,
    "env_api_sync": _env_api_sync,
}


@pytest.mark.parametrize("opener", sorted(UPGRADERS))
def test_revision_0001_is_upgraded_with_rows_intact(
    pg_url: str, outputs: Path, monkeypatch: pytest.MonkeyPatch, opener: str
) -> None:
    make_revision_0001(pg_url)
    monkeypatch.setenv("CKPT_INDEX_LOCATION", "old-node")
    UPGRADERS[opener](pg_url, outputs, monkeypatch)  # outputs is empty: a sync prunes nothing

    assert revision_of(pg_url) == HEAD_REVISION
    rows = rows_by_path(pg_url)
    assert sorted(rows) == sorted(("old-node", r["checkpoint_path"]) for r in _ROWS_0001)
    for old in _ROWS_0001:
        row = rows[("old-node", old["checkpoint_path"])]
        assert {k: row[k] for k in old} == old
        assert row["metrics"] == {n: v for c, n, v in _METRICS_0001 if c == old["id"]}
    state = snapshot(pg_url)
    assert {("checkpoints", "location")} <= {(t, c) for t, c, _ in state["columns"]}
    # The new revision's view and the next insert's id work on the upgraded rows.
    engine = open_engine(pg_url)
    try:
        with engine.connect() as conn:
            flat = conn.execute(text("SELECT DISTINCT location FROM checkpoint_metrics_flat")).all()
        assert flat == [("old-node",)]
        record = record_without_metadata(
            checkpoint_path="/data/new.ckpt",
            sidecar_path=None,
            ckpt=FileState(1, 1),
            sidecar=None,
            error=None,
        )
        ids = run_write(engine, lambda conn: upsert_records(conn, [record]))
        assert ids["/data/new.ckpt"] > 3
    finally:
        engine.dispose()


@pytest.fixture
def too_new(pg_url: str, outputs: Path) -> str:
    """A populated index stamped with a revision this release does not know."""
    make_tree(outputs)
    api.sync(outputs, db=pg_url)
    stamp(pg_url, TOO_NEW)
    return pg_url


def _assert_refused(message: str) -> None:
    assert TOO_NEW in message and HEAD_REVISION in message, message
    assert "newer" in message


def _upgrade(url: str) -> None:
    engine = create_index_engine(url)
    try:
        upgrade(engine, url, "head")
    finally:
        engine.dispose()


def test_too_new_schema_is_refused_by_the_api(too_new: str, outputs: Path) -> None:
    before = snapshot(too_new)
    calls = {
        "open_engine": lambda: open_engine(too_new),
        "open_engine_readonly": lambda: open_engine(too_new, readonly=True),
        "read_only_engine": lambda: ckpt_index.read_only_engine(too_new),
        "connect": lambda: ckpt_index.connect(too_new),
        "api_sync": lambda: api.sync(outputs, db=too_new),
        "api_query": lambda: api.query(db=too_new, best_by="hmean"),
        "upgrade": lambda: _upgrade(too_new),
    }
    for how, call in calls.items():
        with pytest.raises(SchemaTooNewError) as info:
            call()
        _assert_refused(str(info.value))
        assert (info.value.found, info.value.head) == (TOO_NEW, HEAD_REVISION), how
        assert snapshot(too_new) == before, f"{how} wrote to a too-new index"


def test_too_new_schema_is_refused_by_every_command(too_new: str, outputs: Path) -> None:
    before = snapshot(too_new)
    ckpt = next(outputs.rglob("*.ckpt"))
    for args in (
        ["sync", str(outputs)],
        ["query", "--best-by", "hmean"],
        ["show", str(ckpt)],
        ["stats"],
        ["sql", "SELECT count(*) FROM checkpoints"],
        ["db", "upgrade"],
        ["db", "downgrade", "base", "--yes"],
    ):
        result = run(*args, "--db", too_new)
        assert result.exit_code == 1, (args, result.output)
        _assert_refused(result.output)
        assert "Traceback" not in result.output
        assert snapshot(too_new) == before, f"{args} wrote to a too-new index"
    current = run("db", "current", "--db", too_new)
    assert TOO_NEW in current.output and HEAD_REVISION in current.output
    assert snapshot(too_new) == before


def test_callback_leaves_a_too_new_index_alone(too_new: str, tmp_path: Path, caplog) -> None:
    """The training callback reports the refusal (training goes on) and writes only its sidecars."""
    pytest.importorskip("lightning.pytorch")
    before = snapshot(too_new)
    from ckpt_index.lightning import MetadataCallback

    run_dir = tmp_path / "run"
    fit(run_dir, MetadataCallback(db=too_new), max_epochs=1)
    ckpts = list((run_dir / "checkpoints").glob("*.ckpt"))
    assert ckpts and all(sidecar_path_for(c).exists() for c in ckpts)
    assert snapshot(too_new) == before
    assert any(
        TOO_NEW in r.getMessage() or TOO_NEW in str(r.exc_info and r.exc_info[1])
        for r in caplog.records
    ), [r.getMessage() for r in caplog.records]


def test_empty_schema_is_not_created_by_readers(pg_url: str) -> None:
    result = run("sql", "SELECT 1", "--db", pg_url)
    assert result.exit_code == 2 and "sync" in result.stderr, result.output
    assert snapshot(pg_url)["objects"] == []
    result = run("db", "current", "--db", pg_url)
    assert result.exit_code == 0 and result.stdout.startswith("base"), result.output
    assert snapshot(pg_url)["objects"] == []
    with pytest.raises(Exception, match="sync"):
        api.query(db=pg_url, best_by="hmean")
    assert snapshot(pg_url)["objects"] == []


# --------------------------------------------------------------------------------------------
# An unreachable server: skipped on a laptop, a failure under CI=true


@pytest.mark.slow  # a pytest in a subprocess: a few seconds
def test_unreachable_server_is_a_failure_under_ci(tmp_path: Path) -> None:
    """Under CI=true the PostgreSQL half of the suite fails rather than being skipped (off CI it
    is skipped, so that a laptop without a server can still run the SQLite half)."""
    import subprocess
    import sys

    env = {
        **os.environ,
        "CI": "true",
        "CKPT_INDEX_TEST_PG": "postgresql+psycopg://postgres@127.0.0.1:9/nowhere",
    }
    tests = Path(__file__).parent
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            f"--rootdir={tests.parent}",
            str(tests / "test_locations.py"),
            "-k",
            "host_name",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    summary = proc.stdout.strip().splitlines()[-1]
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert "1 passed" in summary and "1 error" in summary, summary  # SQLite ran, PostgreSQL failed
    assert "unreachable" in proc.stdout and "CI=true" in proc.stdout


# --------------------------------------------------------------------------------------------
# Every command through CKPT_INDEX_DB


def test_every_command_through_the_environment_variable(
    pg_url: str, outputs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CKPT_INDEX_DB", pg_url)
    ckpts = make_tree(outputs)
    runner = CliRunner()

    def cli_json(*args: str) -> Any:
        result = runner.invoke(cli, [*args, "--format", "json"], catch_exceptions=False)
        assert result.exit_code == 0, (args, result.output)
        return json.loads(result.stdout)

    summary = cli_json("sync", str(outputs))
    assert (summary["added"], summary["valid"]) == (3, 3)
    (best,) = cli_json("query", "--best-by", "hmean")
    assert best["checkpoint_path"] == str(ckpts[2])
    (best_loss,) = cli_json("query", "--best-by", "val/loss")
    assert best_loss["checkpoint_path"] == str(ckpts[2])
    shown = json.loads(runner.invoke(cli, ["show", str(ckpts[0])]).stdout)
    assert shown["exp_name"] == "exp0" and shown["metadata"]["exp_name"] == "exp0"
    stats = cli_json("stats")
    assert stats["checkpoints"] == 3 and stats["revision"] == HEAD_REVISION
    assert make_url(stats["database"]).get_backend_name() == "postgresql"
    assert cli_json(
        "sql",
        "--allow-write-role",
        "SELECT count(*) AS n FROM checkpoint_metrics_flat WHERE metric = 'val/loss'",
    ) == [{"n": 3}]
    current = runner.invoke(cli, ["db", "current"])
    assert current.stdout.startswith(HEAD_REVISION) and "up to date" in current.stdout

    # The Python API resolves the same way.
    again = api.sync(outputs)
    assert (again.checkpoints, again.added, again.removed) == (3, 0, 0)
    assert [r["checkpoint_path"] for r in api.query(best_by="hmean")] == [str(ckpts[2])]
    with ckpt_index.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM checkpoints")).scalar() == 3

    assert len(rows_by_path(pg_url)) == 3  # on the server, in the test's schema...
    assert not list(tmp_path.rglob("*.db")) and not list(tmp_path.rglob("*.db-wal"))  # ...only


# --------------------------------------------------------------------------------------------
# convert, then a sync on PostgreSQL


def test_convert_then_sync_on_postgres_gives_sidecar_rows(pg_url: str, outputs: Path) -> None:
    from ckpt_index.tools.demo import make_tree as demo_tree

    paths = demo_tree(outputs, 6, per_experiment=3, without_sidecar=2)
    bare = [p for p in paths if not sidecar_path_for(p).exists()]
    assert len(bare) == 2
    result = run("sync", str(outputs), "--db", pg_url, "--format", "json")
    assert json.loads(result.stdout)["inferred"] == 2

    converted = run("convert", "--outputs-dir", str(outputs), "--format", "json")
    assert converted.exit_code == 0, converted.output
    assert json.loads(converted.stdout)["converted"] == 2
    assert all(sidecar_path_for(p).exists() for p in bare)

    summary = json.loads(run("sync", str(outputs), "--db", pg_url, "--format", "json").stdout)
    assert (summary["valid"], summary["inferred"], summary["added"]) == (6, 0, 0)
    rows = rows_by_path(pg_url)
    assert len(rows) == 6
    assert {row["source"] for row in rows.values()} == {"sidecar"}
    assert {row["status"] for row in rows.values()} == {"valid"}


def test_readers_leave_an_old_revision_as_it_is(pg_url: str) -> None:
    make_revision_0001(pg_url)
    before = snapshot(pg_url)
    for argv in (["query", "--best-by", "hmean"], ["stats"], ["show", "/x.ckpt"]):
        result = run(*argv, "--db", pg_url)
        assert result.exit_code == 2 and "ckpt-index db upgrade" in result.stderr, (
            argv,
            result.output,
        )
    result = run(
        "sql",
        "--allow-write-role",
        "--format",
        "json",
        "SELECT count(*) AS n FROM checkpoints",
        "--db",
        pg_url,
    )
    assert result.exit_code == 0 and json.loads(result.stdout) == [{"n": 3}], result.output
    _read_only_engine(pg_url, Path("."), pytest.MonkeyPatch())
    assert revision_of(pg_url) == "0001" and snapshot(pg_url) == before


# --------------------------------------------------------------------------------------------
# sql: one statement, in a READ ONLY transaction


@pytest.fixture(scope="module")
def sql_index(pg_admin_engine, tmp_path_factory):
    """One synced schema shared by the read-only tests (each checks that it is left as it was)."""
    schema = f"ckpt_test_{uuid.uuid4().hex[:12]}"
    with pg_admin_engine.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = pg_url_with_schema(schema)
    outputs = tmp_path_factory.mktemp("sql") / "outputs"
    make_tree(outputs)
    api.sync(outputs, db=url)
    reader = create_engine(url, pool_size=1, max_overflow=0)
    yield url, schema, outputs, reader
    reader.dispose()
    with pg_admin_engine.connect() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


@pytest.fixture
def sql_state(sql_index, pg_admin_engine):
    """The shared schema, its state and a function that reads it again; the schema is rebuilt
    if a test managed to write, so that the tests after it still start from the same index."""
    url, schema, outputs, reader = sql_index
    before = snapshot(url, reader)
    yield url, before, lambda: snapshot(url, reader)
    if snapshot(url, reader) != before:
        reader.dispose()  # its connection's search_path names a schema about to be recreated
        with pg_admin_engine.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        api.sync(outputs, db=url)


PG_REFUSED = [
    "INSERT INTO checkpoint_metrics VALUES (1, 'evil', 1.0)",
    "UPDATE checkpoints SET hmean = 1.0 RETURNING id",
    "DELETE FROM checkpoints",
    "DELETE FROM checkpoint_metrics RETURNING checkpoint_id",
    "TRUNCATE checkpoints CASCADE",
    "DROP TABLE checkpoint_metrics",
    "DROP VIEW checkpoint_metrics_flat",
    "CREATE TABLE evil (x int)",
    "CREATE TEMP TABLE evil (x int)",
    "CREATE TABLE evil AS SELECT * FROM checkpoints",
    "SELECT * INTO evil FROM checkpoints",
    "CREATE VIEW evil AS SELECT 1",
    "CREATE INDEX evil ON checkpoints (loss)",
    "ALTER TABLE checkpoints ADD COLUMN evil text",
    "COMMENT ON TABLE checkpoints IS 'evil'",
    "SELECT nextval('checkpoints_id_seq')",
    "SELECT setval('checkpoints_id_seq', 1000)",
    "WITH x AS (DELETE FROM checkpoints RETURNING id) SELECT * FROM x",
    "WITH x AS (SELECT id FROM checkpoints) DELETE FROM checkpoints WHERE id IN (SELECT id FROM x)",
    "SELECT 1; DELETE FROM checkpoints",
    "DELETE FROM checkpoints; SELECT 1",
    # Ending the READ ONLY transaction from inside the statement text, then writing:
    "SELECT 1; COMMIT; DELETE FROM checkpoints",
    "SELECT 1; ROLLBACK; DELETE FROM checkpoints; SELECT 1",
    "COMMIT; DELETE FROM checkpoints RETURNING id",
    "END; DELETE FROM checkpoint_metrics RETURNING checkpoint_id",
    "ABORT; START TRANSACTION READ WRITE; DELETE FROM checkpoints RETURNING id",
    "SET default_transaction_read_only = off; COMMIT; DELETE FROM checkpoints RETURNING id",
    "SET transaction_read_only = off; DELETE FROM checkpoints RETURNING id",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE; COMMIT; DELETE FROM checkpoints",
    "SET default_transaction_read_only = off",
    "SET transaction_read_only = off",
    "DO $$ BEGIN DELETE FROM checkpoints; END $$",
    "CREATE FUNCTION evil() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "VACUUM checkpoints",
    "ANALYZE checkpoints",
    "LOCK TABLE checkpoints IN ACCESS EXCLUSIVE MODE",
    "",
    "   ",
    "-- only a comment",
]


@pytest.mark.parametrize("statement", PG_REFUSED)
def test_sql_refuses_writes_on_postgres(sql_state, statement: str) -> None:
    url, before, now = sql_state
    # As the superuser on purpose (--allow-write-role): the READ ONLY transaction alone must hold.
    result = run("sql", "--db", url, "--allow-write-role", "--", statement)
    assert now() == before, "the index was modified"
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    message = result.stderr.strip()
    assert message.startswith("Error: ") and "Traceback" not in message
    if statement.strip() and not statement.startswith("--"):
        assert any(
            word in message.lower()
            for word in ("refused", "read-only", "read-write mode", "one statement", "only queries")
        ), message


PG_ALLOWED = [
    ("SELECT count(*) AS n FROM checkpoints -- how many?", [{"n": 3}]),
    ("SELECT count(*) AS n FROM checkpoints;", [{"n": 3}]),
    (
        "SELECT ';' AS semi, 'DELETE FROM checkpoints; COMMIT' AS text",
        [{"semi": ";", "text": "DELETE FROM checkpoints; COMMIT"}],
    ),
    ("SELECT $$;$$ AS dollar", [{"dollar": ";"}]),
    (
        "SELECT exp_name FROM checkpoints WHERE exp_name LIKE 'exp%' AND exp_name NOT LIKE '%2' "
        "ORDER BY exp_name",
        [{"exp_name": "exp0"}, {"exp_name": "exp1"}],
    ),
    (
        "SELECT 7 % 4 AS mod, '100%' AS pct, '%s' AS placeholder",
        [{"mod": 3, "pct": "100%", "placeholder": "%s"}],
    ),
    (
        "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 5) "
        "SELECT sum(x) AS s FROM n",
        [{"s": 15}],
    ),
    (
        "SELECT metric, count(*) AS n FROM checkpoint_metrics_flat WHERE metric = 'val/loss' "
        "GROUP BY metric",
        [{"metric": "val/loss", "n": 3}],
    ),
    (
        "SELECT exp_name, hmean FROM checkpoints ORDER BY hmean DESC LIMIT 1",
        [{"exp_name": "exp2", "hmean": 0.7}],
    ),
    (
        "SELECT count(*) AS n FROM information_schema.tables WHERE table_schema = current_schema() "
        "AND table_name = 'checkpoints'",
        [{"n": 1}],
    ),
    ("SHOW transaction_read_only", [{"transaction_read_only": "on"}]),
]


@pytest.mark.parametrize("statement, expected", PG_ALLOWED, ids=[s for s, _ in PG_ALLOWED])
def test_sql_reads_on_postgres(sql_state, statement: str, expected) -> None:
    url, before, now = sql_state
    result = run("sql", "--db", url, "--allow-write-role", "--format", "json", statement)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == expected
    assert now() == before


def test_connect_and_read_only_engine_refuse_writes_on_postgres(sql_state) -> None:
    from sqlalchemy.exc import DBAPIError

    url, before, now = sql_state
    with ckpt_index.connect(url) as conn:
        assert conn.execute(text("SELECT count(*) FROM checkpoints")).scalar() == 3
        with pytest.raises(DBAPIError, match="read-only"):
            conn.execute(text("DELETE FROM checkpoints"))
    engine = ckpt_index.read_only_engine(url)
    try:
        with engine.connect() as conn:
            with pytest.raises(DBAPIError, match="read-only"):
                conn.execute(text("UPDATE checkpoints SET hmean = 1"))
    finally:
        engine.dispose()
    assert now() == before


def test_pandas_reads_postgres_through_the_read_only_engine(sql_state) -> None:
    pd = pytest.importorskip("pandas")
    url, _, _ = sql_state
    engine = ckpt_index.read_only_engine(url)
    try:
        frame = pd.read_sql("SELECT exp_name, hmean FROM checkpoints ORDER BY hmean DESC", engine)
        assert frame["exp_name"].tolist() == ["exp2", "exp1", "exp0"]
        flat = pd.read_sql("SELECT * FROM checkpoint_metrics_flat", engine)
        wide = flat.pivot(index="checkpoint_path", columns="metric", values="value")
        assert {"hmean", "val/loss"} <= set(wide.columns) and len(wide) == 3
        assert len(pd.read_sql_table("checkpoints", engine)) == 3
    finally:
        engine.dispose()


# --------------------------------------------------------------------------------------------
# --where behaves the same on both backends, whatever the types


WHERE_TYPE_CASES = [
    "encoder = 5",
    "epoch = '3'",
    "epoch = 'x'",
    "epoch in (1, 'x')",
    "val/loss = 'abc'",
    "created_at > 5",
    "encoder_pretrained = 1",
    "save_last = true",
    "hmean like '0.6%'",
    "epoch like '1'",
    "val/loss like '0.09%'",
]


@pytest.fixture(scope="module")
def twins(sql_index, tmp_path_factory) -> tuple[str, str]:
    """The read-only tests' tree synced into SQLite too: (sqlite URL, PostgreSQL URL)."""
    url, _, outputs, _ = sql_index
    sqlite_url = "sqlite:///" + str(tmp_path_factory.mktemp("twin") / "twin.db")
    api.sync(outputs, db=sqlite_url)
    return sqlite_url, url


@pytest.mark.parametrize("expr", WHERE_TYPE_CASES)
def test_where_with_mixed_types_answers_alike_on_both_backends(twins, expr: str) -> None:
    """SQLite compares across types by its affinity rules; PostgreSQL has no operator for
    ``integer = varchar``. Whatever the answer (rows, nothing, or a usage error), it must be the
    same on both, and never a database error."""
    answers = []
    for url in twins:
        result = run("query", "--where", expr, "--format", "json", "--db", url)
        assert "database error" not in result.output, (url.split(":")[0], result.output)
        paths = (
            sorted(r["checkpoint_path"] for r in json.loads(result.stdout))
            if result.exit_code == 0
            else []
        )
        answers.append((result.exit_code, paths))
    assert answers[0] == answers[1], f"sqlite {answers[0]} != postgresql {answers[1]}"


# --------------------------------------------------------------------------------------------
# Ties: a row without epoch or step loses them on both backends


def _inferred(path: str, epoch: int | None, step: int | None, hmean: float, exp: str = "e"):
    """A row as the fallbacks make it for a checkpoint without a sidecar: hmean known (from a W&B
    run, say) but not always the epoch or the step."""
    record = record_without_metadata(
        checkpoint_path=path, sidecar_path=None, ckpt=FileState(1, 1), sidecar=None, error=None
    )
    record.columns.update(
        status="inferred", source="wandb", epoch=epoch, global_step=step, hmean=hmean, exp_name=exp
    )
    record.metrics = {"hmean": hmean, "val/loss": 1 - hmean}
    return record


@pytest.mark.parametrize("best_by", ["hmean", "metrics.hmean", "val/loss"])
@pytest.mark.parametrize("group_by", [None, "exp_name"])
def test_best_by_tie_break_puts_unknown_epoch_and_step_last(
    db_url: str, best_by: str, group_by: str | None
) -> None:
    """Ties go to the higher epoch, then the higher step; NULL is not higher. PostgreSQL sorts
    NULL first in a descending order, SQLite last: only an explicit NULLS LAST agrees."""
    engine = open_engine(db_url)
    try:
        run_write(
            engine,
            lambda conn: upsert_records(
                conn,
                [
                    _inferred("/runs/a.ckpt", 5, 100, 0.8),
                    _inferred("/runs/b.ckpt", None, None, 0.8),
                    _inferred("/runs/c.ckpt", 5, None, 0.8),
                    _inferred("/runs/d.ckpt", 4, 900, 0.8),
                ],
            ),
        )
    finally:
        engine.dispose()
    spec = {"best_by": best_by, "group_by": group_by}
    assert [r["checkpoint_path"] for r in api.query(db=db_url, **spec)] == ["/runs/a.ckpt"]


# --------------------------------------------------------------------------------------------
# A server whose collation is not bytewise (en-US is the common default)


#: en-US as ICU has it, and with punctuation ignored at the first level (``ka-shifted``), which is
#: how glibc's en_US.UTF-8 -- the default of most Linux installations -- compares.
COLLATIONS = {"icu-en-US": "en-US", "glibc-like": "en-US-u-ka-shifted"}


@pytest.fixture(scope="module", params=sorted(COLLATIONS))
def icu_url(request, pg_admin_engine) -> str:
    """A database whose default collation is a language's, not bytewise (one per module: each
    test syncs roots of its own)."""
    name = f"ckpt_test_icu_{uuid.uuid4().hex[:10]}"
    with pg_admin_engine.connect() as conn:
        try:
            conn.execute(
                text(
                    f'CREATE DATABASE "{name}" TEMPLATE template0 LOCALE_PROVIDER icu '
                    f"ICU_LOCALE '{COLLATIONS[request.param]}' LOCALE 'C.UTF-8'"
                )
            )
        except Exception as exc:  # noqa: BLE001 - a server built without ICU
            pytest.skip(f"cannot create an ICU-collated database: {exc}")
    yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    with pg_admin_engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.mark.parametrize("sibling", ["out+old", "out~"])
def test_sync_prunes_only_below_its_root_on_an_icu_collated_server(
    icu_url: str, tmp_path: Path, sibling: str
) -> None:
    """In ICU's en-US, '+', '#', '~' and '=' sort between '/' and '0': a path range ``out/`` ..
    ``out0`` compared in the database's collation also holds ``out+old/...``, so syncing
    ``out`` would delete the sibling's rows."""
    out, other = tmp_path / "out", tmp_path / sibling
    keep = write_checkpoint(out / "e" / "x.ckpt", seed_document())
    neighbour = write_checkpoint(other / "e" / "x.ckpt", seed_document())
    age(tmp_path)
    api.sync([out, other], db=icu_url)
    summary = api.sync(out, db=icu_url)
    assert summary.removed == 0 and summary.unchanged == 1
    paths = {path for _, path in rows_by_path(icu_url) if path.startswith(str(tmp_path))}
    assert paths == {str(keep), str(neighbour)}


def test_unchanged_tree_is_not_read_again_on_an_icu_collated_server(
    icu_url: str, tmp_path: Path
) -> None:
    root = tmp_path / "runs"
    for name in ("a-b/x", "a_b/x", "A/x", "a b/x", "a/x", "a.b/x", "z~/x"):
        write_checkpoint(root / f"{name}.ckpt", seed_document())
    age(root)
    api.sync(root, db=icu_url)
    again = api.sync(root, db=icu_url)
    assert (again.parsed, again.added, again.updated, again.removed, again.unchanged) == (
        0,
        0,
        0,
        0,
        7,
    )
    for victim in root.glob("a*/x.ckpt"):
        victim.unlink()
        sidecar_path_for(victim).unlink()
    pruned = api.sync(root, db=icu_url)
    assert (pruned.removed, pruned.unchanged) == (5, 2)
    assert len([p for _, p in rows_by_path(icu_url) if p.startswith(str(root))]) == 2


# --------------------------------------------------------------------------------------------
# The training callback upserting into PostgreSQL


def fit(root: Path, callback, *, max_epochs: int = 4, save_top_k: int = 2) -> None:
    torch = pytest.importorskip("torch")
    pl = pytest.importorskip("lightning.pytorch")
    from helpers.modules import tiny_trainer
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    schedule = (0.2, 0.9, 0.4, 0.7, 0.3, 0.5)

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.mse_loss(self.layer(x), y)

        def validation_step(self, batch, batch_idx):
            x, y = batch
            score = schedule[self.current_epoch % len(schedule)]
            self.log_dict(
                {
                    "val/loss": nn.functional.mse_loss(self.layer(x), y),
                    "val/hmean": score,
                    "val/precision": score,
                    "val/recall": score,
                }
            )

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    g = torch.Generator().manual_seed(0)
    data = DataLoader(
        TensorDataset(torch.randn(8, 4, generator=g), torch.randn(8, 1, generator=g)), batch_size=4
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = tiny_trainer(
            root,
            max_epochs=max_epochs,
            callbacks=[
                ModelCheckpoint(monitor="val/hmean", mode="max", save_top_k=save_top_k),
                callback,
            ],
        )
        trainer.fit(Tiny(), data, data)


@pytest.mark.parametrize("how", ["url", "env"])
def test_callback_upserts_into_postgres(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog, how: str
) -> None:
    pytest.importorskip("lightning.pytorch")
    from ckpt_index.lightning import MetadataCallback

    monkeypatch.setenv("CKPT_INDEX_LOCATION", "trainer-node")
    if how == "env":
        monkeypatch.setenv("CKPT_INDEX_DB", pg_url)
    run_dir = tmp_path / "run"
    fit(run_dir, MetadataCallback(exp_name="pg-run", db=pg_url if how == "url" else None))

    ckpts = run_dir / "checkpoints"
    on_disk = {str(p) for p in ckpts.glob("*.ckpt")}
    # Top-2 of epochs 0..3 by val/hmean: epochs 1 (0.9) and 3 (0.7); the others were deleted,
    # and their rows with them.
    assert {Path(p).name for p in on_disk} == {"epoch=1-step=4.ckpt", "epoch=3-step=8.ckpt"}
    rows = rows_by_path(pg_url)
    assert set(rows) == {("trainer-node", p) for p in on_disk}
    for (_, path), row in rows.items():
        assert row["status"] == "valid" and row["source"] == "sidecar"
        assert row["exp_name"] == "pg-run"
        assert row["sidecar_path"] == str(sidecar_path_for(path))
        assert row["metrics"]["hmean"] == pytest.approx(row["hmean"])
    warnings_logged = [
        r
        for r in caplog.records
        if r.name.startswith("ckpt_index") and r.levelname in ("WARNING", "ERROR")
    ]
    assert not warnings_logged, [r.getMessage() for r in warnings_logged]

    best = run("query", "--best-by", "hmean", "--format", "json", "--db", pg_url)
    assert json.loads(best.stdout)[0]["checkpoint_path"] == str(ckpts / "epoch=1-step=4.ckpt")
    # A sync of the run from the same location finds the callback's rows as it would write them.
    summary = api.sync(run_dir, db=pg_url)
    assert (summary.added, summary.removed, summary.valid) == (0, 0, 2)
    assert set(rows_by_path(pg_url)) == set(rows)
