"""The index database: one resolution rule, alembic-owned schema, upgrades of old databases,
refusal of newer ones, concurrent opening, read-only access and ``ckpt-index db``.

``tests/data/old_revisions/<revision>.db`` keeps one small database per schema revision, made by the
generator functions in ``FIXTURE_GENERATORS`` below; every test that opens one works on a copy.
Create the fixture of a new revision (existing ones are left alone) with::

    .venv/bin/python tests/test_index_db.py
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from helpers.checkpoints import write_checkpoint
from sqlalchemy import inspect, text
from sqlalchemy.exc import DBAPIError

import ckpt_index
from ckpt_index import api
from ckpt_index.index import migrate
from ckpt_index.index.engine import (
    ENV_VAR,
    IndexMissingError,
    create_index_engine,
    disposing,
    open_engine,
    resolve_db_url,
    write_transaction,
)
from ckpt_index.index.migrate import (
    HEAD_REVISION,
    SchemaTooNewError,
    downgrade,
    known_revisions,
    upgrade,
)
from ckpt_index.index.models import Base
from ckpt_index.index.records import record_without_metadata
from ckpt_index.index.store import move_row, upsert_records
from ckpt_index.index.tables import include_object

MIGRATIONS = migrate.MIGRATIONS_DIR
OLD_REVISIONS = Path(__file__).parent / "data" / "old_revisions"
OLD_FIXTURES = sorted(OLD_REVISIONS.glob("*.db"))
#: A revision no release ships: what a database written by a newer ckpt-index looks like.
TOO_NEW = "ffff9999"


# --------------------------------------------------------------------------------------------
# Helpers: plain sqlite3, so that looking at a database never goes through the code under test.


def sqlite_connect(path: Path) -> closing[sqlite3.Connection]:
    return closing(sqlite3.connect(path))


def revision_of(path: Path) -> str | None:
    with sqlite_connect(path) as con:
        if not con.execute("SELECT 1 FROM sqlite_master WHERE name = 'alembic_version'").fetchone():
            return None
        rows = con.execute("SELECT version_num FROM alembic_version").fetchall()
    assert len(rows) <= 1, f"alembic_version holds several rows: {rows}"
    return rows[0][0] if rows else None


def stamp(path: Path, revision: str) -> None:
    with sqlite_connect(path) as con:
        con.execute("UPDATE alembic_version SET version_num = ?", (revision,))
        con.commit()


def schema_objects(path: Path) -> dict[str, set[str]]:
    """Names of the tables, views and indexes in ``path``, by type."""
    with sqlite_connect(path) as con:
        rows = con.execute("SELECT type, name FROM sqlite_master").fetchall()
    objects: dict[str, set[str]] = {"table": set(), "view": set(), "index": set(), "trigger": set()}
    for kind, name in rows:
        objects[kind].add(name)
    return objects


def table_rows(path: Path, table: str) -> list[dict[str, Any]]:
    with sqlite_connect(path) as con:
        con.row_factory = sqlite3.Row
        rows = con.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
    return [dict(row) for row in rows]


def row_counts(path: Path) -> dict[str, int]:
    with sqlite_connect(path) as con:
        return {
            table: con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("alembic_version", "checkpoints", "checkpoint_metrics")
        }


def file_state(path: Path) -> tuple[str, int, int]:
    """Content hash, mtime and size of a database file: equal before and after means untouched."""
    stat = path.stat()
    return hashlib.sha256(path.read_bytes()).hexdigest(), stat.st_mtime_ns, stat.st_size


def schema_diff(path: Path) -> list:
    """alembic's autogenerate comparison of the database at ``path`` with the models."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = create_index_engine(resolve_db_url(path))
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "include_object": include_object}
            )
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


def revisions_base_to_head() -> list[str]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(MIGRATIONS))
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]


def populate(outputs: Path, db: Path, n: int = 3) -> list[Path]:
    """``n`` checkpoints with seed sidecars (hmean 0.5, 0.6, ...), synced into ``db``."""
    paths = [
        write_checkpoint(
            outputs / f"exp{i}" / "checkpoints" / f"epoch-{i:02d}_step-{100 * i:06d}.ckpt",
            **{"metrics.hmean": 0.5 + i / 10, "training.epoch": i, "exp_name": f"exp{i}"},
        )
        for i in range(n)
    ]
    api.sync(outputs, db=db)
    assert row_counts(db)["checkpoints"] == n
    return paths


# --------------------------------------------------------------------------------------------
# Fixture databases of old revisions. A generator writes rows with plain INSERTs in the columns
# of its revision (never through the current models or store), so it keeps making the same
# database however the schema changes later.


#: Columns of ``checkpoints`` at revision 0001, and three rows in them: a valid checkpoint with
#: four metrics, an orphaned sidecar (checkpoint file gone) with one metric, and a checkpoint
#: without metadata (status "missing", no metrics). Frozen: later generators extend them.
_COLUMNS_0001 = (
    "id",
    "checkpoint_path",
    "sidecar_path",
    "exp_name",
    "architecture",
    "encoder",
    "encoder_pretrained",
    "encoder_frozen",
    "decoder",
    "head",
    "loss",
    "epoch",
    "global_step",
    "training_phase",
    "max_epochs",
    "precision",
    "recall",
    "hmean",
    "validation_loss",
    "monitor",
    "mode",
    "save_top_k",
    "save_last",
    "created_at",
    "hydra_config_path",
    "wandb_run_id",
    "source",
    "status",
    "error",
    "warnings",
    "checkpoint_exists",
    "ckpt_size",
    "ckpt_mtime_ns",
    "sidecar_size",
    "sidecar_mtime_ns",
    "metadata_json",
    "indexed_at",
)
_ROWS_0001 = (
    (
        1,
        "/data/outputs/dbnet-resnet50/checkpoints/epoch-10_step-005420.ckpt",
        "/data/outputs/dbnet-resnet50/checkpoints/epoch-10_step-005420.metadata.yaml",
        "dbnet-resnet50-20251018",
        "dbnet",
        "resnet50",
        1,
        0,
        "pan_decoder",
        "db_head",
        "db_loss",
        10,
        5420,
        "training",
        50,
        0.8542,
        0.8321,
        0.843,
        0.0234,
        "val/hmean",
        "max",
        3,
        1,
        "2025-10-18T14:32:15.123456",
        "/data/outputs/dbnet-resnet50/.hydra/config.yaml",
        "abc123def456",
        "sidecar",
        "valid",
        None,
        None,
        1,
        12,
        1_760_000_000_000_000_000,
        900,
        1_760_000_000_000_000_000,
        '{"schema_version":"1.0"}',
        "2025-10-18T15:00:00+00:00",
    ),
    (
        2,
        "/data/outputs/craft-resnet18/checkpoints/epoch-03_step-000800.ckpt",
        "/data/outputs/craft-resnet18/checkpoints/epoch-03_step-000800.metadata.yaml",
        "craft-resnet18-20251019",
        "craft",
        "resnet18",
        1,
        1,
        None,
        None,
        None,
        3,
        800,
        "finetuning",
        20,
        None,
        None,
        0.61,
        None,
        None,
        None,
        None,
        None,
        "2025-10-19T09:00:00",
        None,
        None,
        "sidecar",
        "valid",
        None,
        "metrics.hmean only",
        0,
        None,
        None,
        640,
        1_760_100_000_000_000_000,
        '{"schema_version":"1.0"}',
        "2025-10-19T10:00:00+00:00",
    ),
    (
        3,
        "/data/outputs/pan-mobilenet/checkpoints/last.ckpt",
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        "none",
        "missing",
        None,
        None,
        1,
        34,
        1_760_200_000_000_000_000,
        None,
        None,
        None,
        "2025-10-20T10:00:00+00:00",
    ),
)
_METRICS_0001 = (
    (1, "hmean", 0.843),
    (1, "precision", 0.8542),
    (1, "recall", 0.8321),
    (1, "val/loss", 0.0234),
    (2, "hmean", 0.61),
)


def _write_fixture(path: Path, revision: str, columns, rows, metrics) -> None:
    """Create ``path`` at ``revision`` with these rows, as one self-contained, compact file."""
    url = resolve_db_url(path)
    engine = create_index_engine(url)
    try:
        upgrade(engine, url, revision)
        with write_transaction(engine) as conn:
            conn.exec_driver_sql(
                f"INSERT INTO checkpoints ({', '.join(columns)}) "
                f"VALUES ({', '.join('?' * len(columns))})",
                list(rows),
            )
            conn.exec_driver_sql(
                "INSERT INTO checkpoint_metrics (checkpoint_id, name, value) VALUES (?, ?, ?)",
                list(metrics),
            )
    finally:
        engine.dispose()
    with sqlite_connect(path) as con:  # rollback-journal mode: no -wal file to commit alongside
        con.isolation_level = None
        con.execute("PRAGMA journal_mode = DELETE")
        con.execute("VACUUM")


def make_revision_0001_fixture(path: Path) -> None:
    """Revision 0001 (one row per checkpoint path) holding the three rows of ``_ROWS_0001``."""
    _write_fixture(path, "0001", _COLUMNS_0001, _ROWS_0001, _METRICS_0001)


def make_revision_0002_fixture(path: Path) -> None:
    """Revision 0002 (rows keyed by location and path): the rows of 0001 on host ``gpu-node-1``,
    plus the first checkpoint's path again on ``gpu-node-2`` with its own metric."""
    rows = [(*row, "gpu-node-1") for row in _ROWS_0001]
    twin = list(_ROWS_0001[0])
    twin[0], twin[17] = 4, 0.85  # id, hmean
    rows.append((*twin, "gpu-node-2"))
    metrics = [*_METRICS_0001, (4, "hmean", 0.85)]
    _write_fixture(path, "0002", (*_COLUMNS_0001, "location"), rows, metrics)


def make_revision_0003_fixture(path: Path) -> None:
    """Revision 0003 (inferred_fields): the rows of 0002, plus an inferred checkpoint on
    ``gpu-node-1`` whose fields came from fallbacks."""
    columns = (*_COLUMNS_0001, "location", "inferred_fields")
    rows = [(*row, "gpu-node-1", None) for row in _ROWS_0001]
    twin = list(_ROWS_0001[0])
    twin[0], twin[17] = 4, 0.85  # id, hmean
    rows.append((*twin, "gpu-node-2", None))
    inferred = list(_ROWS_0001[2])
    inferred[0] = 5
    inferred[1] = "/data/outputs/pan-mobilenet/checkpoints/epoch-02_step-000300.ckpt"
    inferred[4], inferred[11], inferred[12] = "pan", 2, 300  # architecture, epoch, global_step
    inferred[26], inferred[27] = "checkpoint", "inferred"  # source, status
    rows.append(
        (
            *inferred,
            "gpu-node-1",
            '{"architecture":"path","epoch":"checkpoint","global_step":"checkpoint"}',
        )
    )
    metrics = [*_METRICS_0001, (4, "hmean", 0.85)]
    _write_fixture(path, "0003", columns, rows, metrics)


def _upgrade_fixture(path: Path, revision: str, update: str | None = None) -> None:
    """Upgrade the fixture database at ``path`` to ``revision``, run ``update`` (SQL giving the
    new columns a value) and compact it as the committed fixtures are (no WAL, vacuumed)."""
    url = resolve_db_url(path)
    engine = create_index_engine(url)
    try:
        upgrade(engine, url, revision)
        if update is not None:
            with write_transaction(engine) as conn:
                for statement in update.split(";"):  # the fixtures' SQL holds no other ";"
                    conn.exec_driver_sql(statement)
    finally:
        engine.dispose()
    with sqlite_connect(path) as con:
        con.isolation_level = None
        con.execute("PRAGMA journal_mode = DELETE")
        con.execute("VACUUM")


def make_revision_0004_fixture(path: Path) -> None:
    """Revision 0004 (bytewise paths; no new column): the rows of 0003."""
    make_revision_0003_fixture(path)
    _upgrade_fixture(path, "0004")


def make_revision_0005_fixture(path: Path) -> None:
    """Revision 0005 (unsafe_globals, stale, scan_error): the rows of 0004, the first one read by
    ``--inspect`` (no unsafe globals, not stale). 0006 only adds columns (``aliases``,
    ``is_last``, NULL until a sync); rows of links are folded by the next sync (test_aliases)."""
    make_revision_0004_fixture(path)
    _upgrade_fixture(
        path, "0005", "UPDATE checkpoints SET unsafe_globals = '[]', stale = 0 WHERE id = 1"
    )


def make_revision_0006_fixture(path: Path) -> None:
    """Revision 0006 (aliases, is_last): the rows of 0005, the first one with a link listed."""
    make_revision_0005_fixture(path)
    _upgrade_fixture(
        path,
        "0006",
        "UPDATE checkpoints SET aliases = '[\"/runs/exp/last.ckpt\"]', is_last = 0 WHERE id = 1",
    )


def make_revision_0007_fixture(path: Path) -> None:
    """Revision 0007 (hyperparameters): the rows of 0006, the first one with a parameter set of
    two parameters (one overridden by Hydra)."""
    make_revision_0006_fixture(path)
    _upgrade_fixture(
        path,
        "0007",
        "INSERT INTO param_sets (id, digest, size) VALUES (1, 'fixture-0007', 2);"
        "INSERT INTO param_values (param_set_id, name, value_type, numeric_value, text_value,"
        " source, overridden) VALUES"
        " (1, 'model.lr', 'float', 0.01, '0.01', 'hydra', 1),"
        " (1, 'data.batch_size', 'int', 16, '16', 'hydra', 0);"
        "UPDATE checkpoints SET param_set_id = 1 WHERE id = 1",
    )


#: revision -> function writing that revision's fixture database (add one per new revision).
FIXTURE_GENERATORS: dict[str, Callable[[Path], None]] = {
    "0001": make_revision_0001_fixture,
    "0002": make_revision_0002_fixture,
    "0003": make_revision_0003_fixture,
    "0004": make_revision_0004_fixture,
    "0005": make_revision_0005_fixture,
    "0006": make_revision_0006_fixture,
    "0007": make_revision_0007_fixture,
}


# --------------------------------------------------------------------------------------------
# resolve_db_url: --db, else $CKPT_INDEX_DB, else ./ckpt_index.db


@pytest.mark.parametrize("relative", ["index.db", "sub/dir/index.db", "./index.db"])
def test_relative_path_becomes_absolute_sqlite_url(tmp_path: Path, relative: str) -> None:
    expected = "sqlite:///" + str((tmp_path / relative).absolute())
    assert resolve_db_url(relative) == expected
    assert resolve_db_url(Path(relative)) == expected
    assert resolve_db_url(relative).startswith("sqlite:////")


def test_absolute_path_and_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_db_url(tmp_path / "a.db") == f"sqlite:///{tmp_path}/a.db"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_db_url("~/idx.db") == f"sqlite:///{tmp_path}/home/idx.db"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://ckpt:s3cr%40t@db.example.org:5432/ckpt_index",
        "postgresql://localhost/ckpt",
        "sqlite:///relative.db",
        "sqlite:////abs/index.db",
        "sqlite://",
    ],
)
def test_url_passes_through(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_db_url(url) == url
    monkeypatch.setenv(ENV_VAR, url)
    assert resolve_db_url(None) == url


def test_environment_variable_then_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert ENV_VAR == "CKPT_INDEX_DB"
    assert resolve_db_url(None) == f"sqlite:///{tmp_path}/ckpt_index.db"
    monkeypatch.setenv(ENV_VAR, "")
    assert resolve_db_url(None) == f"sqlite:///{tmp_path}/ckpt_index.db"
    monkeypatch.setenv(ENV_VAR, "from_env.db")
    assert resolve_db_url(None) == f"sqlite:///{tmp_path}/from_env.db"
    assert resolve_db_url("explicit.db") == f"sqlite:///{tmp_path}/explicit.db"


@pytest.mark.parametrize("entry", ["cli", "api"])
@pytest.mark.parametrize("setting", ["default", "env", "explicit_over_env"])
def test_one_resolution_rule_for_cli_and_api(
    entry: str, setting: str, tmp_path: Path, outputs: Path, invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_checkpoint(outputs / "exp" / "checkpoints" / "epoch-01_step-000010.ckpt")
    explicit = None
    expected = tmp_path / "ckpt_index.db"
    if setting != "default":
        monkeypatch.setenv(ENV_VAR, "env_dir/env.db")
        expected = tmp_path / "env_dir" / "env.db"
    if setting == "explicit_over_env":
        explicit = str(tmp_path / "explicit.db")
        expected = Path(explicit)
    if entry == "cli":
        args = ["sync", str(outputs)] + (["--db", explicit] if explicit else [])
        assert invoke(*args, db=False).exit_code == 0
        # The placeholder checkpoint is unreadable, and queries skip unreadable ones by default.
        result = invoke(
            "query",
            "--format",
            "paths",
            "--include-unreadable",
            *(["--db", explicit] if explicit else []),
            db=False,
        )
        assert result.exit_code == 0, result.output
        assert "epoch-01_step-000010.ckpt" in result.output
    else:
        api.sync(outputs, db=explicit)
        assert len(api.query(db=explicit, include_unreadable=True)) == 1
    assert expected.exists()
    assert revision_of(expected) == HEAD_REVISION
    assert {p.name for p in tmp_path.glob("*.db")} == (
        {expected.name} if expected.parent == tmp_path else set()
    )


# --------------------------------------------------------------------------------------------
# The schema at head


def test_head_revision_is_the_migrations_head() -> None:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(MIGRATIONS))
    assert script.get_heads() == [HEAD_REVISION], "one head, and HEAD_REVISION names it"
    assert script.get_current_head() == HEAD_REVISION
    assert known_revisions() == {rev.revision for rev in script.walk_revisions()}
    assert revisions_base_to_head()[-1] == HEAD_REVISION


def test_new_database_is_created_at_head(db_path: Path) -> None:
    assert not db_path.exists()
    open_engine(db_path).dispose()
    assert revision_of(db_path) == HEAD_REVISION
    objects = schema_objects(db_path)
    assert {"checkpoints", "checkpoint_metrics", "alembic_version"} <= objects["table"]
    assert "checkpoint_metrics_flat" in objects["view"]


def test_new_database_in_a_new_directory(tmp_path: Path) -> None:
    db = tmp_path / "a" / "b" / "index.db"
    open_engine(db).dispose()
    assert revision_of(db) == HEAD_REVISION


@pytest.mark.parametrize("column", ["hmean", "encoder", "epoch", "exp_name", "architecture"])
def test_checkpoint_columns_are_indexed(db_path: Path, column: str) -> None:
    engine = open_engine(db_path)
    try:
        indexes = inspect(engine).get_indexes("checkpoints")
        assert any(ix["column_names"][0] == column for ix in indexes), indexes
        with engine.connect() as conn:
            plan = " ".join(
                row[-1]
                for row in conn.exec_driver_sql(
                    "EXPLAIN QUERY PLAN SELECT id, checkpoint_path FROM checkpoints "
                    f"WHERE {column} = ?",
                    ("x",),
                )
            )
        assert "USING INDEX" in plan or "USING COVERING INDEX" in plan, plan
    finally:
        engine.dispose()


def test_metrics_are_indexed_by_name_and_value(db_path: Path) -> None:
    engine = open_engine(db_path)
    try:
        indexes = inspect(engine).get_indexes("checkpoint_metrics")
        assert any(ix["column_names"][:2] == ["name", "value"] for ix in indexes), indexes
        pk = inspect(engine).get_pk_constraint("checkpoint_metrics")
        assert sorted(pk["constrained_columns"]) == ["checkpoint_id", "name"]
        with engine.connect() as conn:
            plan = " ".join(
                row[-1]
                for row in conn.exec_driver_sql(
                    "EXPLAIN QUERY PLAN SELECT checkpoint_id FROM checkpoint_metrics "
                    "WHERE name = ? AND value > ?",
                    ("val/hmean", 0.5),
                )
            )
        assert "INDEX" in plan and "value>?" in plan.replace(" ", ""), plan
    finally:
        engine.dispose()


def test_checkpoint_path_is_unique(db_path: Path) -> None:
    engine = open_engine(db_path)
    try:
        insp = inspect(engine)
        unique = [ix["column_names"] for ix in insp.get_indexes("checkpoints") if ix["unique"]]
        unique += [uc["column_names"] for uc in insp.get_unique_constraints("checkpoints")]
        assert any(cols[-1] == "checkpoint_path" for cols in unique), unique
    finally:
        engine.dispose()


def test_models_and_migrations_agree(db_path: Path) -> None:
    from alembic import command

    open_engine(db_path).dispose()
    assert schema_diff(db_path) == []
    url = resolve_db_url(db_path)
    engine = create_index_engine(url)
    try:
        with write_transaction(engine) as conn:
            command.check(migrate.alembic_config(url, conn))  # raises when a diff is detected
    finally:
        engine.dispose()


def test_every_revision_upgrades_and_downgrades(db_path: Path) -> None:
    """The stairway: up one revision, down one, up again, all the way to head; then down to base."""
    url = resolve_db_url(db_path)
    engine = create_index_engine(url)
    try:
        previous = "base"
        for revision in revisions_base_to_head():
            upgrade(engine, url, revision)
            assert revision_of(db_path) == revision
            downgrade(engine, url, previous)
            assert revision_of(db_path) == (None if previous == "base" else previous)
            upgrade(engine, url, revision)
            previous = revision
        assert revision_of(db_path) == HEAD_REVISION
        assert schema_diff(db_path) == []
        downgrade(engine, url, "base")
    finally:
        engine.dispose()
    objects = schema_objects(db_path)
    assert objects["table"] == {"alembic_version"}
    assert not objects["view"] and not objects["trigger"]
    assert {ix for ix in objects["index"] if not ix.startswith("sqlite_autoindex")} == set()


def test_sqlite_pragmas_on_a_writable_engine(db_path: Path) -> None:
    engine = open_engine(db_path)
    try:
        for _ in range(2):  # a fresh connection each time, not only the one that ran migrations
            with engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
                assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
                assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() > 0
            engine.dispose()
    finally:
        engine.dispose()


def test_foreign_keys_cascade_metrics(db_path: Path) -> None:
    engine = open_engine(db_path)
    try:
        record = record_without_metadata(
            checkpoint_path="/x/a.ckpt", sidecar_path=None, ckpt=None, sidecar=None, error=None
        )
        record.metrics = {"hmean": 0.5, "val/loss": 0.1}
        with write_transaction(engine) as conn:
            ids = upsert_records(conn, [record])
        with write_transaction(engine) as conn:
            conn.exec_driver_sql("DELETE FROM checkpoints WHERE id = ?", (ids["/x/a.ckpt"],))
        assert row_counts(db_path)["checkpoint_metrics"] == 0
        with pytest.raises(DBAPIError):
            with write_transaction(engine) as conn:
                conn.exec_driver_sql(
                    "INSERT INTO checkpoint_metrics (checkpoint_id, name, value) "
                    "VALUES (999, 'x', 1)"
                )
    finally:
        engine.dispose()


def test_move_row_keeps_the_row_and_replaces_one_at_the_new_path(db_path: Path) -> None:
    def row(path: str):
        return record_without_metadata(
            checkpoint_path=path, sidecar_path=None, ckpt=None, sidecar=None, error=None
        )

    with disposing(open_engine(db_path)) as engine:
        with write_transaction(engine) as conn:
            ids = upsert_records(conn, [row("/x/old.ckpt"), row("/x/new.ckpt")])
            assert move_row(conn, "/x/old.ckpt", "/x/new.ckpt", sidecar_path="/x/new.yaml")
            assert not move_row(conn, "/x/gone.ckpt", "/x/other.ckpt", sidecar_path=None)
    rows = table_rows(db_path, "checkpoints")
    assert [(r["id"], r["checkpoint_path"], r["sidecar_path"]) for r in rows] == [
        (ids["/x/old.ckpt"], "/x/new.ckpt", "/x/new.yaml")
    ]


# --------------------------------------------------------------------------------------------
# Older databases are upgraded when opened, rows intact


def test_empty_file_is_created_at_head(db_path: Path) -> None:
    db_path.touch()
    open_engine(db_path).dispose()
    assert revision_of(db_path) == HEAD_REVISION
    assert "checkpoints" in schema_objects(db_path)["table"]
    assert schema_diff(db_path) == []


def test_database_downgraded_to_base_is_upgraded_when_opened(db_path: Path) -> None:
    url = resolve_db_url(db_path)
    open_engine(db_path).dispose()
    engine = create_index_engine(url)
    downgrade(engine, url, "base")
    engine.dispose()
    assert revision_of(db_path) is None
    assert "checkpoints" not in schema_objects(db_path)["table"]

    open_engine(db_path).dispose()
    assert revision_of(db_path) == HEAD_REVISION
    assert schema_diff(db_path) == []


def test_every_old_revision_has_a_fixture_database() -> None:
    fixtures = {p.stem for p in OLD_FIXTURES}
    assert fixtures <= known_revisions(), "a fixture named after a revision that does not exist"
    missing = known_revisions() - {HEAD_REVISION} - fixtures
    assert not missing, (
        f"no fixture database for revision(s) {sorted(missing)}: add a generator to "
        "FIXTURE_GENERATORS in tests/test_index_db.py and run it as a script"
    )
    assert set(FIXTURE_GENERATORS) <= fixtures, "a generator whose database is not committed"


@pytest.mark.parametrize("revision", sorted(FIXTURE_GENERATORS))
def test_fixture_database_is_what_its_generator_makes(revision: str, tmp_path: Path) -> None:
    """Fails when a released revision was edited after its fixture was made (never edit one)."""
    committed = OLD_REVISIONS / f"{revision}.db"
    fresh = tmp_path / f"{revision}.db"
    FIXTURE_GENERATORS[revision](fresh)
    assert revision_of(committed) == revision_of(fresh) == revision

    def schema(path: Path) -> list[tuple]:
        with sqlite_connect(path) as con:
            return sorted(
                con.execute("SELECT type, name, tbl_name, sql FROM sqlite_master"),
                key=lambda row: (row[0], row[1]),
            )

    assert schema(committed) == schema(fresh)
    for table in ("checkpoints", "checkpoint_metrics"):
        assert table_rows(committed, table) == table_rows(fresh, table)


def _open_with_open_engine(db: Path, invoke) -> None:
    open_engine(db).dispose()


def _open_with_cli_db_upgrade(db: Path, invoke) -> None:
    result = invoke("db", "upgrade", "--db", str(db))
    assert result.exit_code == 0, result.output
    assert f"at revision {HEAD_REVISION}" in result.output


def _open_with_cli_sync(db: Path, invoke) -> None:
    empty = db.parent / "empty_root"
    empty.mkdir()
    result = invoke("sync", str(empty), "--db", str(db))
    assert result.exit_code == 0, result.output


#: Openers that write. Reading ones (query, read_only_engine...) never migrate: see
#: test_readonly_commands.py.
OPENERS = {
    "open_engine": _open_with_open_engine,
    "cli_db_upgrade": _open_with_cli_db_upgrade,
    "cli_sync": _open_with_cli_sync,
}


@pytest.mark.parametrize("opener", sorted(OPENERS))
@pytest.mark.parametrize("fixture", OLD_FIXTURES, ids=lambda p: p.stem)
def test_old_revision_is_upgraded_with_rows_intact(
    fixture: Path, opener: str, tmp_path: Path, invoke
) -> None:
    db = tmp_path / "old.db"
    shutil.copyfile(fixture, db)
    assert revision_of(db) == fixture.stem
    before = {table: table_rows(db, table) for table in ("checkpoints", "checkpoint_metrics")}
    assert before["checkpoints"] and before["checkpoint_metrics"]

    OPENERS[opener](db, invoke)

    assert revision_of(db) == HEAD_REVISION
    assert schema_diff(db) == []
    for table, old_rows in before.items():
        new_rows = table_rows(db, table)
        assert len(new_rows) == len(old_rows), table
        shared = set(old_rows[0]) & set(new_rows[0])
        assert {"checkpoint_path", "hmean"} <= shared or table == "checkpoint_metrics"
        keys = sorted(shared)
        assert [{k: row[k] for k in keys} for row in new_rows] == [
            {k: row[k] for k in keys} for row in old_rows
        ], table
    # The upgraded index is usable: the view, the unique key and an upsert of an existing path.
    with sqlite_connect(db) as con:
        flat = con.execute(
            "SELECT checkpoint_path, metric, value FROM checkpoint_metrics_flat"
        ).fetchall()
    assert len(flat) == sum(
        1
        for m in before["checkpoint_metrics"]
        for c in before["checkpoints"]
        if c["id"] == m["checkpoint_id"] and c["checkpoint_exists"]
    )
    engine = open_engine(db)
    try:
        first = table_rows(db, "checkpoints")[0]
        record = record_without_metadata(
            checkpoint_path=first["checkpoint_path"],
            sidecar_path=None,
            ckpt=None,
            sidecar=None,
            error=None,
        )
        where = {"location": first["location"]} if "location" in first else {}
        with write_transaction(engine) as conn:
            assert upsert_records(conn, [record], **where) == {
                first["checkpoint_path"]: first["id"]
            }
    finally:
        engine.dispose()
    assert row_counts(db)["checkpoints"] == len(before["checkpoints"])


# --------------------------------------------------------------------------------------------
# A database from a newer release is refused, and nothing is written


@pytest.fixture
def too_new_db(db_path: Path, outputs: Path) -> Path:
    """A populated index stamped with a revision this release does not know."""
    populate(outputs, db_path)
    stamp(db_path, TOO_NEW)
    return db_path


def _assert_refused(message: str) -> None:
    assert TOO_NEW in message and HEAD_REVISION in message, message
    assert "newer" in message


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
@pytest.mark.parametrize(
    "how",
    ["open_engine", "open_engine_readonly", "read_only_engine", "connect", "api_sync", "api_query"],
)
def test_too_new_database_is_refused(
    too_new_db: Path, outputs: Path, how: str, journal_mode: str
) -> None:
    # A newer release may keep its index in either journal mode (e.g. DELETE on a network mount).
    with sqlite_connect(too_new_db) as con:
        assert con.execute(f"PRAGMA journal_mode = {journal_mode}").fetchone()[0] == journal_mode
    before, counts = file_state(too_new_db), row_counts(too_new_db)
    calls = {
        "open_engine": lambda: open_engine(too_new_db),
        "open_engine_readonly": lambda: open_engine(too_new_db, readonly=True),
        "read_only_engine": lambda: ckpt_index.read_only_engine(too_new_db),
        "connect": lambda: ckpt_index.connect(too_new_db),
        "api_sync": lambda: api.sync(outputs, db=too_new_db),
        "api_query": lambda: api.query(db=too_new_db, best_by="hmean"),
    }
    with pytest.raises(SchemaTooNewError) as excinfo:
        calls[how]()
    _assert_refused(str(excinfo.value))
    assert excinfo.value.found == TOO_NEW and excinfo.value.head == HEAD_REVISION
    assert row_counts(too_new_db) == counts
    assert revision_of(too_new_db) == TOO_NEW
    assert file_state(too_new_db) == before, "the refused database was modified"


@pytest.mark.parametrize(
    "args",
    [
        ("sync", "{outputs}"),
        ("query", "--best-by", "hmean"),
        ("show", "{outputs}/exp0/checkpoints/epoch-00_step-000000.ckpt"),
        ("stats",),
        ("sql", "SELECT count(*) FROM checkpoints"),
        ("db", "upgrade", "--db", "{db}"),
        ("db", "downgrade", "base", "--yes", "--db", "{db}"),
    ],
    ids=lambda args: " ".join(args[:2]).replace("{outputs}", "ROOT").replace("--db", "").strip(),
)
def test_too_new_database_is_refused_by_the_cli(
    too_new_db: Path, outputs: Path, invoke, args
) -> None:
    before, counts = file_state(too_new_db), row_counts(too_new_db)
    argv = [a.format(outputs=outputs, db=too_new_db) for a in args]
    result = invoke(*argv)
    assert result.exit_code == 1, result.output
    _assert_refused(result.output)
    assert "Traceback" not in result.output
    assert row_counts(too_new_db) == counts
    assert revision_of(too_new_db) == TOO_NEW
    assert file_state(too_new_db) == before


def test_db_current_names_both_revisions_of_a_too_new_database(too_new_db: Path, invoke) -> None:
    before = file_state(too_new_db)
    result = invoke("db", "current", "--db", str(too_new_db))
    assert TOO_NEW in result.output and HEAD_REVISION in result.output
    assert file_state(too_new_db) == before


# --------------------------------------------------------------------------------------------
# Several processes opening the same database at once

_CHILD = r"""
import sys, time
from pathlib import Path

db, rendezvous, n = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
from ckpt_index.index.engine import open_engine, write_transaction
from ckpt_index.index.migrate import current_revision
from ckpt_index.index.records import record_without_metadata
from ckpt_index.index.store import upsert_records
import alembic.command, alembic.script  # imported before the start line, not raced on

(rendezvous / f"ready-{n}").touch()
deadline = time.monotonic() + 120
while not (rendezvous / "go").exists():
    if time.monotonic() > deadline:
        sys.exit("never told to go")
    time.sleep(0.001)
engine = open_engine(db)
try:
    record = record_without_metadata(checkpoint_path=f"/concurrent/{n}.ckpt", sidecar_path=None,
                                     ckpt=None, sidecar=None, error=None)
    record.metrics = {"hmean": int(n) / 10}
    with write_transaction(engine) as conn:
        upsert_records(conn, [record])
    with engine.connect() as conn:
        print(current_revision(conn))
finally:
    engine.dispose()
"""
N_PROCESSES = 8


def _prepare(state: str, db: Path) -> None:
    if state == "missing":
        return
    if state == "empty_file":
        db.touch()
    elif state == "base":
        url = resolve_db_url(db)
        open_engine(db).dispose()
        engine = create_index_engine(url)
        downgrade(engine, url, "base")
        engine.dispose()
    elif state == "head":
        open_engine(db).dispose()
    else:
        shutil.copyfile(OLD_REVISIONS / f"{state}.db", db)


# A fresh and the oldest database by default; the other starting states are marked slow (each
# case starts eight interpreters).
_CONCURRENT_STATES = [
    pytest.param(
        state, marks=() if state in {"missing", OLD_FIXTURES[0].stem} else pytest.mark.slow
    )
    for state in ["missing", "empty_file", "base", "head", *(p.stem for p in OLD_FIXTURES)]
]


@pytest.mark.parametrize("state", _CONCURRENT_STATES)
def test_processes_opening_at_once_all_succeed(state: str, tmp_path: Path) -> None:
    db = tmp_path / "shared" / "index.db"
    db.parent.mkdir()
    _prepare(state, db)
    existing = table_rows(db, "checkpoints") if state in {p.stem for p in OLD_FIXTURES} else []
    rendezvous = tmp_path / "rendezvous"
    rendezvous.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(db), str(rendezvous), str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        for i in range(N_PROCESSES)
    ]
    try:
        deadline = time.monotonic() + 120
        while len(list(rendezvous.glob("ready-*"))) < N_PROCESSES:
            assert time.monotonic() < deadline, "the processes did not start"
            assert all(p.poll() is None for p in procs), [
                p.communicate() for p in procs if p.poll() is not None
            ]
            time.sleep(0.01)
        (rendezvous / "go").touch()
        results = [p.communicate(timeout=180) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    outcomes = zip(procs, results, strict=True)
    failures = [(p.returncode, err) for p, (_, err) in outcomes if p.returncode != 0]
    assert not failures, failures[0][1]
    assert [out.strip() for out, _ in results] == [HEAD_REVISION] * N_PROCESSES

    with sqlite_connect(db) as con:
        assert con.execute("SELECT version_num FROM alembic_version").fetchall() == [
            (HEAD_REVISION,)
        ]
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    rows = table_rows(db, "checkpoints")
    paths = {row["checkpoint_path"] for row in rows}
    assert {f"/concurrent/{i}.ckpt" for i in range(N_PROCESSES)} <= paths
    assert {row["checkpoint_path"] for row in existing} <= paths
    assert len(rows) == N_PROCESSES + len(existing)
    assert row_counts(db)["checkpoint_metrics"] >= N_PROCESSES
    assert schema_diff(db) == []


# --------------------------------------------------------------------------------------------
# Read-only access for notebooks


@pytest.fixture
def populated(db_path: Path, outputs: Path) -> Path:
    populate(outputs, db_path)
    return db_path


@pytest.fixture(params=["read_only_engine", "connect"])
def read_only(request, populated: Path):
    """A read-only connection to the populated index, opened either public way."""
    if request.param == "read_only_engine":
        engine = ckpt_index.read_only_engine(populated)
        with engine.connect() as conn:
            yield conn
        engine.dispose()
    else:
        with ckpt_index.connect(populated) as conn:
            yield conn


def test_read_only_can_select(read_only) -> None:
    assert read_only.execute(text("SELECT count(*) FROM checkpoints")).scalar() == 3
    best = read_only.execute(
        text("SELECT exp_name, hmean FROM checkpoints ORDER BY hmean DESC LIMIT 1")
    ).one()
    assert tuple(best) == ("exp2", pytest.approx(0.7))
    flat = read_only.execute(
        text(
            "SELECT checkpoint_path, metric, value FROM checkpoint_metrics_flat "
            "WHERE metric = 'hmean'"
        )
    ).all()
    assert sorted(v for _, _, v in flat) == pytest.approx([0.5, 0.6, 0.7])
    # Reporting pragmas that notebooks and pandas use to inspect the schema stay allowed.
    columns = read_only.exec_driver_sql("PRAGMA table_info(checkpoints)").all()
    assert "hmean" in {row[1] for row in columns}


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO checkpoint_metrics (checkpoint_id, name, value) VALUES (1, 'x', 1.0)",
        "UPDATE checkpoints SET hmean = 1.0",
        "DELETE FROM checkpoints",
        "DELETE FROM alembic_version",
        "CREATE TABLE scratch (a)",
        "CREATE TEMP TABLE scratch (a)",
        "CREATE INDEX ix_scratch ON checkpoints (loss)",
        "DROP VIEW checkpoint_metrics_flat",
        "ATTACH DATABASE '{attach}' AS other",
        "PRAGMA query_only = OFF",
        "PRAGMA journal_mode = DELETE",
        "PRAGMA user_version = 7",
        "PRAGMA foreign_keys = OFF",
        "WITH gone AS (SELECT id FROM checkpoints) DELETE FROM checkpoints WHERE id IN gone",
        "VACUUM INTO '{attach}'",
        "ANALYZE",
    ],
)
def test_read_only_refuses_writes(
    read_only, populated: Path, tmp_path: Path, statement: str
) -> None:
    attach = tmp_path / "attached.db"
    counts = row_counts(populated)
    with pytest.raises(DBAPIError):
        read_only.exec_driver_sql(statement.format(attach=attach))
    read_only.rollback()
    assert not attach.exists()
    assert row_counts(populated) == counts
    assert "scratch" not in schema_objects(populated)["table"]
    assert "checkpoint_metrics_flat" in schema_objects(populated)["view"]
    with sqlite_connect(populated) as con:
        assert con.execute("PRAGMA user_version").fetchone()[0] == 0
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # The connection still reads after a refusal.
    assert read_only.execute(text("SELECT count(*) FROM checkpoints")).scalar() == 3


@pytest.mark.parametrize(
    "how", ["read_only_engine", "connect", "open_engine_readonly", "api_query"]
)
def test_read_only_open_of_a_missing_database(tmp_path: Path, how: str) -> None:
    db = tmp_path / "nowhere" / "index.db"
    calls = {
        "read_only_engine": lambda: ckpt_index.read_only_engine(db),
        "connect": lambda: ckpt_index.connect(db),
        "open_engine_readonly": lambda: open_engine(db, readonly=True),
        "api_query": lambda: api.query(db=db),
    }
    with pytest.raises(IndexMissingError) as excinfo:
        calls[how]()
    assert str(db) in str(excinfo.value)
    assert not db.exists() and not db.parent.exists()


def test_read_only_open_of_an_empty_file(db_path: Path) -> None:
    db_path.touch()
    with pytest.raises(IndexMissingError):
        ckpt_index.read_only_engine(db_path)
    assert db_path.stat().st_size == 0


def test_pandas_read_sql(populated: Path) -> None:
    pandas = pytest.importorskip("pandas")
    engine = ckpt_index.read_only_engine(populated)
    try:
        frame = pandas.read_sql(
            "SELECT exp_name, encoder, epoch, hmean FROM checkpoints ORDER BY hmean", engine
        )
        assert list(frame.columns) == ["exp_name", "encoder", "epoch", "hmean"]
        assert frame["exp_name"].tolist() == ["exp0", "exp1", "exp2"]
        assert frame["hmean"].tolist() == pytest.approx([0.5, 0.6, 0.7])

        flat = pandas.read_sql("SELECT * FROM checkpoint_metrics_flat", engine)
        assert {"checkpoint_id", "checkpoint_path", "exp_name", "metric", "value"} <= set(
            flat.columns
        )
        assert len(flat) == row_counts(populated)["checkpoint_metrics"]
        wide = flat.pivot_table(index="checkpoint_path", columns="metric", values="value")
        assert sorted(wide["hmean"]) == pytest.approx([0.5, 0.6, 0.7])
    finally:
        engine.dispose()
    with ckpt_index.connect(populated) as conn:
        frame = pandas.read_sql(
            text("SELECT name, count(*) AS n FROM checkpoint_metrics GROUP BY name"), conn
        )
    assert set(frame["n"]) == {3}


# --------------------------------------------------------------------------------------------
# ckpt-index db current | upgrade | downgrade | history


def test_db_history_lists_every_revision_newest_first(invoke) -> None:
    result = invoke("db", "history")
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    revisions = revisions_base_to_head()
    assert len(lines) == len(revisions)
    assert lines[0].split(":")[0].endswith(f"-> {HEAD_REVISION}")
    assert lines[-1].startswith(f"base -> {revisions[0]}:")
    for line, older, newer in zip(reversed(lines), ["base", *revisions], revisions, strict=False):
        assert line.startswith(f"{older} -> {newer}: ")


def test_db_upgrade_current_downgrade(db_path: Path, invoke) -> None:
    db = ["--db", str(db_path)]
    result = invoke("db", "upgrade", *db)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"at revision {HEAD_REVISION}"
    assert revision_of(db_path) == HEAD_REVISION

    result = invoke("db", "current", *db)
    assert result.exit_code == 0
    assert result.output.strip() == f"{HEAD_REVISION} (up to date)"

    result = invoke("db", "upgrade", *db)  # idempotent
    assert result.exit_code == 0 and f"at revision {HEAD_REVISION}" in result.output

    result = invoke("db", "downgrade", "base", "--yes", *db)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "at revision base"
    assert schema_objects(db_path)["table"] == {"alembic_version"}

    result = invoke("db", "current", *db)
    assert result.exit_code == 0
    assert "base" in result.output and f"head is {HEAD_REVISION}" in result.output

    assert invoke("db", "upgrade", *db).exit_code == 0
    assert revision_of(db_path) == HEAD_REVISION
    assert schema_diff(db_path) == []


def test_db_upgrade_to_a_given_revision_then_head(db_path: Path, invoke) -> None:
    first = revisions_base_to_head()[0]
    result = invoke("db", "upgrade", first, "--db", str(db_path))
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"at revision {first}"
    assert revision_of(db_path) == first
    current = invoke("db", "current", "--db", str(db_path)).output
    assert current.startswith(first)
    assert ("up to date" in current) == (first == HEAD_REVISION)
    assert invoke("db", "upgrade", "--db", str(db_path)).exit_code == 0
    assert revision_of(db_path) == HEAD_REVISION


def test_db_downgrade_keeps_rows_of_a_populated_index(populated: Path, invoke) -> None:
    revisions = revisions_base_to_head()
    if len(revisions) < 2:
        pytest.skip("only one revision: nothing between base and head")
    paths = {row["checkpoint_path"] for row in table_rows(populated, "checkpoints")}
    result = invoke("db", "downgrade", revisions[-2], "--yes", "--db", str(populated))
    assert result.exit_code == 0, result.output
    assert revision_of(populated) == revisions[-2]
    assert {row["checkpoint_path"] for row in table_rows(populated, "checkpoints")} == paths
    assert invoke("db", "upgrade", "--db", str(populated)).exit_code == 0
    assert {row["checkpoint_path"] for row in table_rows(populated, "checkpoints")} == paths


def test_db_commands_use_the_environment_and_default(tmp_path: Path, invoke, monkeypatch) -> None:
    assert invoke("db", "upgrade").exit_code == 0
    assert revision_of(tmp_path / "ckpt_index.db") == HEAD_REVISION
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "env.db"))
    assert invoke("db", "upgrade").exit_code == 0
    assert revision_of(tmp_path / "env.db") == HEAD_REVISION
    assert invoke("db", "current").output.strip() == f"{HEAD_REVISION} (up to date)"


def test_db_current_does_not_create_a_database(tmp_path: Path, invoke) -> None:
    # A typo in --db must not leave an empty database behind.
    db = tmp_path / "typo.db"
    result = invoke("db", "current", "--db", str(db))
    assert "base" in result.output or str(db) in result.output, result.output
    assert not db.exists()


if __name__ == "__main__":
    # Write the fixture database of every revision that has a generator but no committed file.
    OLD_REVISIONS.mkdir(parents=True, exist_ok=True)
    for rev, make in FIXTURE_GENERATORS.items():
        target = OLD_REVISIONS / f"{rev}.db"
        if target.exists():
            print(f"{target}: exists, left alone (released fixtures are never regenerated)")
            continue
        make(target)
        print(f"{target}: written at revision {revision_of(target)}")
