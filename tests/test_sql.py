"""``ckpt-index sql``: one read-only statement over the index tables and views; writes refused.

Every refused statement must leave the database exactly as it was: same rows, same schema, same
pragmas, and the same bytes in the database file.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from helpers.checkpoints import write_checkpoint
from helpers.pg_roles import login_role
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from ckpt_index.cli import cli
from ckpt_index.index.engine import is_sqlite

#: Tests of what only SQLite has (pragmas, ATTACH, the database file's bytes) run on SQLite only;
#: PostgreSQL's own refusals are in test_postgres.py.
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture
def invoke_db(db_url: str, request) -> Callable[..., Any]:
    """Like conftest's, but ``sql`` on PostgreSQL runs as a read-only role (the superuser the
    other commands use is refused by ``sql``), created when first needed (after the sync made
    the tables)."""
    runner = CliRunner()

    def run(*args: str, input: str | None = None):
        argv = list(args)
        if argv and "--db" not in argv:
            use = db_url
            if argv[0] == "sql" and not is_sqlite(db_url):
                use = request.getfixturevalue("reader_url")
            argv += ["--db", use]
        return runner.invoke(cli, argv, input=input, catch_exceptions=False)

    return run


@pytest.fixture
def reader_url(pg_admin_engine, db_url: str) -> Iterator[str]:
    with login_role(pg_admin_engine, db_url) as url:
        yield url


@pytest.fixture
def synced(outputs: Path, invoke_db, db_url: str) -> str:
    for i, (enc, hmean, loss) in enumerate(
        [("resnet50", 0.81, 0.03), ("resnet18", 0.92, 0.01), ("resnet50", 0.77, 0.05)]
    ):
        write_checkpoint(
            outputs / f"exp{i}/checkpoints/epoch-{i:02d}_step-{i * 100:06d}.ckpt",
            **{
                "exp_name": f"exp{i}",
                "metrics.hmean": hmean,
                "training.epoch": i,
                "model.encoder.model_name": enc,
                "metrics.additional_metrics": {"val/loss": loss},
            },
        )
    assert invoke_db("sync", str(outputs)).exit_code == 0
    return db_url


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def _state(db_url: str) -> dict:
    """Everything a write could change, read without going through ckpt-index."""
    if not is_sqlite(db_url):
        return _server_state(db_url)
    db_path = Path(make_url(db_url).database)
    with sqlite3.connect(f"{db_path.as_uri()}?mode=ro", uri=True) as conn:
        state = {
            "checkpoints": conn.execute("SELECT * FROM checkpoints ORDER BY id").fetchall(),
            "metrics": conn.execute(
                "SELECT * FROM checkpoint_metrics ORDER BY checkpoint_id, name"
            ).fetchall(),
            "schema": conn.execute(
                "SELECT type, name, sql FROM sqlite_master ORDER BY name"
            ).fetchall(),
            "user_version": conn.execute("PRAGMA user_version").fetchone()[0],
            "journal_mode": conn.execute("PRAGMA journal_mode").fetchone()[0],
            "alembic": conn.execute("SELECT version_num FROM alembic_version").fetchall(),
        }
    conn.close()
    state["db_bytes"] = _digest(db_path)
    state["wal_bytes"] = _digest(db_path.with_name(db_path.name + "-wal"))
    return state


def _server_state(db_url: str) -> dict:
    engine = create_engine(db_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            insp = inspect(conn)
            return {
                "checkpoints": conn.execute(text("SELECT * FROM checkpoints ORDER BY id")).all(),
                "metrics": conn.execute(
                    text("SELECT * FROM checkpoint_metrics ORDER BY checkpoint_id, name")
                ).all(),
                "tables": sorted(insp.get_table_names()),
                "views": sorted(insp.get_view_names()),
                "columns": [c["name"] for c in insp.get_columns("checkpoints")],
                "alembic": conn.execute(text("SELECT version_num FROM alembic_version")).all(),
            }
    finally:
        engine.dispose()


# --------------------------------------------------------------------------------------------
# Reading


def test_select_table(invoke_db, synced) -> None:
    result = invoke_db(
        "sql", "SELECT exp_name, encoder, hmean FROM checkpoints ORDER BY hmean DESC"
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["exp_name", "encoder", "hmean"]
    assert [line.split()[0] for line in lines[1:]] == ["exp1", "exp0", "exp2"]
    assert "0.9200" in lines[1]


def test_select_json(invoke_db, synced) -> None:
    result = invoke_db(
        "sql",
        "SELECT exp_name, hmean, epoch FROM checkpoints ORDER BY exp_name",
        "--format",
        "json",
    )
    assert result.exit_code == 0
    assert json.loads(result.stdout) == [
        {"exp_name": "exp0", "hmean": 0.81, "epoch": 0},
        {"exp_name": "exp1", "hmean": 0.92, "epoch": 1},
        {"exp_name": "exp2", "hmean": 0.77, "epoch": 2},
    ]


def test_select_csv_and_jsonl(invoke_db, synced) -> None:
    sql = (
        "SELECT c.exp_name, m.value AS val_loss, NULL AS empty FROM checkpoints c "
        "JOIN checkpoint_metrics m ON m.checkpoint_id = c.id AND m.name = 'val/loss' "
        "ORDER BY m.value"
    )
    result = invoke_db("sql", sql, "--format", "csv")
    assert result.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(r["exp_name"], float(r["val_loss"]), r["empty"]) for r in rows] == [
        ("exp1", 0.01, ""),
        ("exp0", 0.03, ""),
        ("exp2", 0.05, ""),
    ]
    result = invoke_db("sql", sql, "--format", "jsonl")
    assert result.exit_code == 0
    assert [json.loads(line) for line in result.stdout.splitlines()] == [
        {"exp_name": "exp1", "val_loss": 0.01, "empty": None},
        {"exp_name": "exp0", "val_loss": 0.03, "empty": None},
        {"exp_name": "exp2", "val_loss": 0.05, "empty": None},
    ]


ALLOWED = [
    (
        "SELECT metric, count(*) AS n FROM checkpoint_metrics_flat GROUP BY metric ORDER BY metric",
        lambda rows: {r["metric"]: r["n"] for r in rows}["val/loss"] == 3,
    ),
    (
        "SELECT checkpoint_path, value FROM checkpoint_metrics_flat WHERE metric = 'hmean' "
        "ORDER BY value DESC LIMIT 1",
        lambda rows: rows[0]["value"] == 0.92 and rows[0]["checkpoint_path"].endswith(".ckpt"),
    ),
    ("SELECT count(*) AS n FROM checkpoints -- how many?", lambda rows: rows == [{"n": 3}]),
    ("SELECT count(*) AS n FROM checkpoints; -- how many?", lambda rows: rows == [{"n": 3}]),
    ("SELECT count(*) AS n FROM checkpoints;", lambda rows: rows == [{"n": 3}]),
    ("  select 1 as one  ", lambda rows: rows == [{"one": 1}]),
    (
        "SELECT ';' AS semi, 'DELETE FROM checkpoints' AS text",
        lambda rows: rows == [{"semi": ";", "text": "DELETE FROM checkpoints"}],
    ),
    (
        "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 5) "
        "SELECT sum(x) AS s FROM n",
        lambda rows: rows == [{"s": 15}],
    ),
    (
        "SELECT encoder, max(hmean) AS best FROM checkpoints GROUP BY encoder ORDER BY encoder",
        lambda rows: (
            rows == [{"encoder": "resnet18", "best": 0.92}, {"encoder": "resnet50", "best": 0.81}]
        ),
    ),
    (
        "SELECT exp_name FROM checkpoints WHERE encoder LIKE 'resnet5%' ORDER BY exp_name",
        lambda rows: rows == [{"exp_name": "exp0"}, {"exp_name": "exp2"}],
    ),
]
ALLOWED_SQLITE = [
    (
        "PRAGMA table_info(checkpoints)",
        lambda rows: {"checkpoint_path", "hmean", "encoder", "epoch"} <= {r["name"] for r in rows},
    ),
    (
        "PRAGMA index_list(checkpoints)",
        lambda rows: "ix_checkpoints_hmean" in {r["name"] for r in rows},
    ),
    (
        "SELECT name FROM sqlite_master WHERE type = 'view'",
        lambda rows: {"name": "checkpoint_metrics_flat"} in rows,
    ),
]


@pytest.mark.parametrize("statement, check", ALLOWED, ids=[s for s, _ in ALLOWED])
def test_allowed(invoke_db, synced, statement, check) -> None:
    before = _state(synced)
    result = invoke_db("sql", statement, "--format", "json")
    assert result.exit_code == 0, result.output
    assert check(json.loads(result.stdout))
    assert _state(synced) == before


@sqlite_only
@pytest.mark.parametrize("statement, check", ALLOWED_SQLITE, ids=[s for s, _ in ALLOWED_SQLITE])
def test_allowed_on_sqlite(invoke_db, synced, statement, check) -> None:
    test_allowed(invoke_db, synced, statement, check)


# --------------------------------------------------------------------------------------------
# Writing is refused


REFUSED = [
    "INSERT INTO checkpoints (checkpoint_path, source, status, checkpoint_exists, indexed_at) "
    "VALUES ('/x.ckpt', 'x', 'valid', 1, 'now')",
    "INSERT INTO checkpoint_metrics VALUES (1, 'evil', 1.0)",
    "REPLACE INTO checkpoint_metrics VALUES (1, 'hmean', 1.0)",
    "UPDATE checkpoints SET hmean = 1.0",
    "UPDATE checkpoints SET hmean = 1.0 RETURNING id",
    "DELETE FROM checkpoints",
    "DELETE FROM checkpoint_metrics RETURNING checkpoint_id",
    "DROP TABLE checkpoints",
    "DROP VIEW checkpoint_metrics_flat",
    "DROP INDEX ix_checkpoints_hmean",
    "CREATE TABLE evil (x)",
    "CREATE TEMP TABLE evil (x)",
    "CREATE INDEX evil ON checkpoints (loss)",
    "CREATE VIEW evil AS SELECT 1",
    "CREATE TRIGGER evil AFTER INSERT ON checkpoints BEGIN DELETE FROM checkpoints; END",
    "ALTER TABLE checkpoints ADD COLUMN evil TEXT",
    "SELECT 1; DELETE FROM checkpoints",
    "SELECT 1; DELETE FROM checkpoints;",
    "SELECT 1;\nDELETE FROM checkpoints -- trailing",
    "DELETE FROM checkpoints; SELECT 1",
    "WITH x AS (DELETE FROM checkpoints RETURNING id) SELECT * FROM x",
    "WITH x AS (SELECT id FROM checkpoints) DELETE FROM checkpoints WHERE id IN (SELECT id FROM x)",
    "ATTACH DATABASE '{attach}' AS x",
    "ATTACH '{attach}' AS x",
    "PRAGMA journal_mode=DELETE",
    "PRAGMA journal_mode = MEMORY",
    "PRAGMA user_version=5",
    "PRAGMA query_only = OFF",
    "PRAGMA foreign_keys = OFF",
    "PRAGMA writable_schema = ON",
    "PRAGMA wal_checkpoint(TRUNCATE)",
    "VACUUM",
    "VACUUM INTO '{attach}'",
    "REINDEX",
    "REINDEX checkpoints",
    "ANALYZE",
    "SELECT load_extension('/nonexistent/evil')",
    "",
    "   ",
    "/* only a comment */",
    "-- only a comment",
]


@sqlite_only
@pytest.mark.parametrize("statement", REFUSED)
def test_refused(invoke_db, synced, tmp_path, statement) -> None:
    attach = tmp_path / "attached.db"
    statement = statement.replace("{attach}", str(attach))
    before = _state(synced)
    assert before["checkpoints"] and before["metrics"]
    # A statement starting with "-" would be read as an option; "--" ends the options.
    result = invoke_db("sql", "--db", str(synced), "--", statement)
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    message = result.stderr.strip()
    assert message.startswith("Error: ") and len(message) > len("Error: ") + 5
    assert "Traceback" not in message
    assert "\n" not in message  # one clear line
    assert _state(synced) == before
    assert not attach.exists()


@sqlite_only
@pytest.mark.parametrize(
    "statement",
    [
        s
        for s in REFUSED
        if s.strip()
        and not s.startswith("WITH x AS (DELETE")  # a syntax error on SQLite
        and not s.startswith(("--", "/*"))
    ],
)
def test_refusal_says_why(invoke_db, synced, tmp_path, statement) -> None:
    """The message says the statement was refused (read-only, one statement at a time),
    not an incidental error that invites the user to try again differently."""
    result = invoke_db("sql", statement.replace("{attach}", str(tmp_path / "attached.db")))
    assert result.exit_code == 1
    message = result.stderr.lower()
    assert any(
        word in message
        for word in (
            "refused",
            "read-only",
            "readonly",
            "one statement",
            "not authorized",
            "only queries",
        )
    ), message


@sqlite_only
def test_refused_on_literal_tmp_attach_path(invoke_db, synced) -> None:
    target = Path("/tmp/x.db")
    existed = target.exists()
    before = _state(synced)
    result = invoke_db("sql", "ATTACH DATABASE '/tmp/x.db' AS x")
    assert result.exit_code == 1
    assert _state(synced) == before
    if not existed:
        assert not target.exists()


def test_refused_statement_does_not_create_missing_database(invoke, db_path, tmp_path) -> None:
    for statement in ("SELECT 1", "CREATE TABLE t (x)"):
        result = invoke("sql", statement)
        assert result.exit_code == 2  # no index: as for every reading command
        assert result.stderr.strip()
        assert not db_path.exists()
        assert not list(tmp_path.glob("*.db*"))


def test_reads_still_work_after_refusals(invoke_db, synced, outputs) -> None:
    """A refused statement leaves no half-open transaction or state behind in the process."""
    for statement in (
        "DELETE FROM checkpoints",
        "PRAGMA query_only = OFF",
        "SELECT 1; DROP TABLE checkpoints",
    ):
        assert invoke_db("sql", statement).exit_code == 1
    result = invoke_db("sql", "SELECT count(*) AS n FROM checkpoints", "--format", "json")
    assert json.loads(result.stdout) == [{"n": 3}]
    # And the index still takes writes through sync.
    result = invoke_db("sync", str(outputs))
    assert result.exit_code == 0


def test_writes_by_sync_are_not_blocked_by_sql_reads(outputs, invoke_db, synced) -> None:
    write_checkpoint(outputs / "exp9/checkpoints/new.ckpt", **{"metrics.hmean": 0.99})
    assert invoke_db("sql", "SELECT 1").exit_code == 0
    assert invoke_db("sync", str(outputs)).exit_code == 0
    result = invoke_db("sql", "SELECT count(*) AS n FROM checkpoints", "--format", "json")
    assert json.loads(result.stdout) == [{"n": 4}]
