"""Reading commands never write (issue 8, item 5).

`sql`, `query`, `show`, `stats` and `db current` never create, migrate or modify an index: on an
older revision `sql` and `db current` read it as it is and the others exit 2 asking for
`ckpt-index db upgrade`; a missing index is exit 2 and nothing is created. `sql` stops after
`--timeout`, streams its rows, and on PostgreSQL refuses a role that could write. Another user's
read of an idle WAL database leaves no -wal/-shm behind that would block the owner's sync.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from helpers.checkpoints import write_checkpoint
from helpers.pg_roles import login_role
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

import ckpt_index
from ckpt_index import api
from ckpt_index.cli import cli
from ckpt_index.index.engine import (
    IndexChangedError,
    check_unlocked_read,
    create_index_engine,
    is_sqlite,
    resolve_db_url,
)
from ckpt_index.index.migrate import HEAD_REVISION, IndexOutdatedError, downgrade

OLD_FIXTURES = sorted((Path(__file__).parent / "data" / "old_revisions").glob("*.db"))
COUNT = "SELECT count(*) AS n FROM checkpoints"


def run(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def make_tree(outputs: Path) -> list[Path]:
    return [
        write_checkpoint(
            outputs / f"exp{i}/checkpoints/epoch-{i:02d}_step-{i * 100:06d}.ckpt",
            **{"exp_name": f"exp{i}", "metrics.hmean": 0.5 + i / 10, "training.epoch": i},
        )
        for i in range(3)
    ]


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def snapshot(url: str) -> dict[str, Any]:
    """Everything a write could change, read without ckpt-index (no -wal/-shm made by looking)."""
    if is_sqlite(url):
        path = Path(make_url(url).database)
        state: dict[str, Any] = {"dir": sorted(p.name for p in path.parent.iterdir())}
        for suffix in ("", "-wal", "-shm", "-journal"):
            f = Path(str(path) + suffix)
            state[suffix or "db"] = (_digest(f), f.stat().st_mtime_ns) if f.exists() else None
        return state
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            insp = inspect(conn)
            return {
                "alembic": conn.execute(text("SELECT version_num FROM alembic_version")).all(),
                "tables": {
                    t: [c["name"] for c in insp.get_columns(t)] for t in insp.get_table_names()
                },
                "views": sorted(insp.get_view_names()),
                "indexes": sorted(
                    str(i) for t in insp.get_table_names() for i in insp.get_indexes(t)
                ),
                "rows": conn.execute(text("SELECT * FROM checkpoints ORDER BY id")).all(),
                "metrics": conn.execute(
                    text("SELECT * FROM checkpoint_metrics ORDER BY 1, 2")
                ).all(),
            }
    finally:
        engine.dispose()


@pytest.fixture
def synced(db_url: str, outputs: Path) -> tuple[str, list[Path]]:
    ckpts = make_tree(outputs)
    result = run("sync", str(outputs), "--db", db_url)
    assert result.exit_code == 0, result.output
    if is_sqlite(db_url):
        # Checkpoint the WAL into the file, as a finished sync leaves it: the snapshot then sees
        # any byte a reader would change.
        con = sqlite3.connect(make_url(db_url).database)
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.close()
    return db_url, ckpts


@pytest.fixture
def reader(request, db_url: str) -> Callable[[], str]:
    """The URL `sql` reads with: a read-only role on PostgreSQL (the superuser is refused)."""

    def url() -> str:
        if is_sqlite(db_url):
            return db_url
        admin = request.getfixturevalue("pg_admin_engine")
        context = login_role(admin, db_url)
        role_url = context.__enter__()
        request.addfinalizer(lambda: context.__exit__(None, None, None))
        return role_url

    return url


def reading_commands(ckpt: Path) -> dict[str, list[str]]:
    return {
        "query": ["query", "--best-by", "hmean", "--format", "json"],
        "query_paths": ["query", "--include-orphans", "--format", "paths"],
        "show": ["show", str(ckpt)],
        "stats": ["stats", "--format", "json"],
        "du": ["du", "--by", "run", "--format", "json"],
    }


# --------------------------------------------------------------------------------------------
# At head: nothing changes


def test_reading_commands_leave_an_index_at_head_untouched(synced, reader) -> None:
    url, ckpts = synced
    before = snapshot(url)
    for name, args in reading_commands(ckpts[0]).items():
        result = run(*args, "--db", url)
        assert result.exit_code == 0, (name, result.output)
        assert snapshot(url) == before, f"{name} wrote to the index"
    result = run("sql", COUNT, "--format", "json", "--db", reader())
    assert json.loads(result.stdout) == [{"n": 3}]
    result = run("db", "current", "--db", url)
    assert result.stdout.startswith(HEAD_REVISION)
    assert snapshot(url) == before


# --------------------------------------------------------------------------------------------
# At an older revision: read as it is, or exit 2; never migrated


def _at_revision(url: str, revision: str) -> None:
    engine = create_index_engine(url)
    try:
        downgrade(engine, url, revision)
    finally:
        engine.dispose()


def _revision(url: str) -> str:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()


@pytest.mark.parametrize("revision", ["0002", "0003"])
def test_reading_commands_never_migrate_an_older_index(synced, reader, revision: str) -> None:
    url, ckpts = synced
    _at_revision(url, revision)
    before = snapshot(url)
    for name, args in reading_commands(ckpts[0]).items():
        result = run(*args, "--db", url)
        assert result.exit_code == 2, (name, result.output)
        assert "run `ckpt-index db upgrade`" in result.stderr, (name, result.stderr)
        assert revision in result.stderr and HEAD_REVISION in result.stderr
        assert "Traceback" not in result.output
        assert snapshot(url) == before, f"{name} wrote to the index at {revision}"
    # sql reads the tables as they are (the known failure: it migrated them to head).
    result = run("sql", COUNT, "--format", "json", "--db", reader())
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [{"n": 3}]
    result = run("sql", "SELECT 1 AS one", "--format", "json", "--db", reader())
    assert json.loads(result.stdout) == [{"one": 1}]
    result = run("db", "current", "--db", url)
    assert result.exit_code == 0 and result.stdout.startswith(revision), result.output
    # The Python API: the read-only engine reads as it is, query() asks for an upgrade.
    engine = ckpt_index.read_only_engine(reader())
    try:
        with engine.connect() as conn:
            assert conn.execute(text(COUNT)).scalar() == 3
    finally:
        engine.dispose()
    with pytest.raises(IndexOutdatedError, match="db upgrade"):
        api.query(db=url, best_by="hmean")
    assert snapshot(url) == before
    assert _revision(url) == revision


@pytest.mark.parametrize("fixture", OLD_FIXTURES, ids=lambda p: p.stem)
def test_committed_old_revision_files_are_read_not_migrated(fixture: Path, tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    shutil.copyfile(fixture, db)
    url = resolve_db_url(db)
    before = snapshot(url)
    result = run(
        "sql",
        "SELECT checkpoint_path FROM checkpoints ORDER BY id",
        "--format",
        "json",
        "--db",
        str(db),
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["checkpoint_path"].endswith("epoch-10_step-005420.ckpt")
    for args in (["query"], ["stats"], ["show", "/data/outputs/x.ckpt"]):
        result = run(*args, "--db", str(db))
        assert result.exit_code == 2 and "db upgrade" in result.stderr, (args, result.output)
    assert snapshot(url) == before
    with sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True) as con:
        assert con.execute("SELECT version_num FROM alembic_version").fetchone()[0] == fixture.stem
    con.close()


# --------------------------------------------------------------------------------------------
# A missing index: exit 2, nothing created


@pytest.mark.parametrize(
    "args",
    [
        ["query"],
        ["query", "--best-by", "hmean"],
        ["show", "x.ckpt"],
        ["stats"],
        ["sql", "SELECT 1"],
        ["db", "current"],
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_missing_sqlite_index_is_exit_2_and_nothing_is_created(args, tmp_path: Path) -> None:
    db = tmp_path / "nowhere" / "index.db"
    result = run(*args, "--db", str(db))
    assert result.exit_code == 2, result.output
    assert f"no index at {db}; run `ckpt-index sync ROOT` first" in result.stderr
    assert not db.parent.exists()
    # The same through a SQLite URL.
    result = run(*args, "--db", f"sqlite:///{db}")
    assert result.exit_code == 2, result.output
    assert f"no index at {db}" in result.stderr
    assert not db.parent.exists()
    # Nor at the default ./ckpt_index.db (the cwd is tmp_path: `cd /tmp/elsewhere && query`).
    result = run(*args)
    assert result.exit_code == 2
    assert f"no index at {tmp_path / 'ckpt_index.db'}" in result.stderr
    # Nor through the default location or the environment.
    result = CliRunner(env={"CKPT_INDEX_DB": str(tmp_path / "env.db")}).invoke(cli, args)
    assert result.exit_code == 2
    assert sorted(os.listdir(tmp_path)) == []


def test_api_readers_on_a_missing_index_raise_and_create_nothing(tmp_path: Path) -> None:
    """query_index, connect and read_only_engine: IndexMissingError with the same message, and
    no file or directory, at a given path or at the default ./ckpt_index.db (cwd is tmp_path)."""
    from ckpt_index.index.engine import IndexMissingError

    db = tmp_path / "nowhere" / "index.db"
    readers = [
        lambda path: ckpt_index.query_index(db=path, best_by="hmean"),
        lambda path: ckpt_index.connect(path),
        lambda path: ckpt_index.read_only_engine(path).connect(),
    ]
    for read in readers:
        for path, shown in ((db, db), (None, tmp_path / "ckpt_index.db")):
            with pytest.raises(IndexMissingError) as info:
                read(path)
            assert str(info.value) == f"no index at {shown}; run `ckpt-index sync ROOT` first"
    assert sorted(os.listdir(tmp_path)) == []


def test_empty_postgres_schema_is_exit_2_and_stays_empty(pg_url: str) -> None:
    before = snapshot_objects(pg_url)
    for args in (
        ["query"],
        ["stats"],
        ["show", "x.ckpt"],
        ["sql", "SELECT 1", "--allow-write-role"],
    ):
        result = run(*args, "--db", pg_url)
        assert result.exit_code == 2, (args, result.output)
        assert "sync" in result.stderr
    assert snapshot_objects(pg_url) == before == []


def snapshot_objects(url: str) -> list:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return conn.execute(
                text(
                    "SELECT relname FROM pg_class WHERE relnamespace = "
                    "(SELECT oid FROM pg_namespace WHERE nspname = current_schema())"
                )
            ).all()
    finally:
        engine.dispose()


# --------------------------------------------------------------------------------------------
# sql: a statement timeout on both backends, rows streamed


ENDLESS = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT count(*) FROM c"


def _cli(*args: str, timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ckpt_index", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def test_sql_timeout_stops_an_endless_query(synced, reader) -> None:
    url, _ = synced
    # A subprocess with a hard limit: a statement that ignores --timeout fails the test rather
    # than hanging it.
    result = _cli("sql", "--timeout", "1", ENDLESS, "--db", reader(), timeout=60)
    assert result.returncode == 1, result
    assert result.stdout == ""
    assert "stopped after 1 s" in result.stderr and "--timeout" in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    # The same connection settings still run a normal query afterwards, with the default limit.
    result = run("sql", COUNT, "--format", "json", "--db", reader())
    assert json.loads(result.stdout) == [{"n": 3}]


def test_sql_timeout_is_documented_with_its_default() -> None:
    text_ = run("sql", "--help").output
    assert "--timeout SECONDS" in text_ and "30" in text_ and "--allow-write-role" in text_
    assert "Example:" in text_


#: A million rows: before streaming, `sql` held them all, and their rendered text.
MANY = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000) "
    "SELECT x, 'row number ' || x AS label FROM c"
)
MANY_PG = "SELECT x, 'row number ' || x AS label FROM generate_series(1, 1000000) AS x"
_PEAK = """
import resource, subprocess, sys
with open("/dev/null", "w") as devnull:
    done = subprocess.run(sys.argv[1:], stdout=devnull, stderr=subprocess.PIPE, text=True)
print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, done.stderr[-500:])
"""


def test_sql_streams_a_large_result_in_bounded_memory(synced, reader) -> None:
    url, _ = synced
    statement = MANY if is_sqlite(url) else MANY_PG
    argv = [
        sys.executable,
        "-m",
        "ckpt_index",
        "sql",
        "--timeout",
        "0",
        statement,
        "--db",
        reader(),
    ]
    # A fresh parent, so that RUSAGE_CHILDREN holds this command's peak alone.
    out = subprocess.run(
        [sys.executable, "-c", _PEAK, *argv],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    code, peak_kb, stderr = out.split(" ", 2)
    assert code == "0", stderr
    # Held whole, these rows took ~600 MB; streamed, the interpreter and SQLAlchemy are most of it.
    assert int(peak_kb) < 150 * 1024, f"peak RSS {int(peak_kb) // 1024} MB"


# --------------------------------------------------------------------------------------------
# sql on PostgreSQL: only as a role that cannot write


@pytest.fixture
def pg_synced(pg_url: str, outputs: Path) -> str:
    make_tree(outputs)
    assert run("sync", str(outputs), "--db", pg_url).exit_code == 0
    return pg_url


def test_sql_refuses_a_superuser_unless_allowed(pg_synced: str, tmp_path: Path) -> None:
    canary = Path("/tmp") / f"ckpt-canary-{uuid.uuid4().hex}"
    for statement in (COUNT, f"COPY (SELECT 1) TO PROGRAM 'touch {canary}'"):
        result = run("sql", statement, "--db", pg_synced)
        assert result.exit_code == 1, result.output
        assert result.stdout == ""
        assert "superuser" in result.stderr and "--allow-write-role" in result.stderr
        assert "Traceback" not in result.stderr
    assert not canary.exists()
    result = run("sql", COUNT, "--format", "json", "--allow-write-role", "--db", pg_synced)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [{"n": 3}]


def test_sql_runs_as_a_read_only_role(pg_synced: str, pg_admin_engine) -> None:
    before = snapshot(pg_synced)
    with login_role(pg_admin_engine, pg_synced) as url:
        result = run("sql", COUNT, "--format", "json", "--db", url)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == [{"n": 3}]
        result = run("sql", "DELETE FROM checkpoints", "--db", url)
        assert result.exit_code == 1 and "refused" in result.stderr
    assert snapshot(pg_synced) == before


@pytest.mark.parametrize(
    "grant, why",
    [
        (
            'GRANT INSERT ON "{schema}".checkpoint_metrics TO "{role}"',
            "can write to checkpoint_metrics",
        ),
        ('GRANT DELETE, TRUNCATE ON ALL TABLES IN SCHEMA "{schema}" TO "{role}"', "can write to"),
        ('GRANT CREATE ON SCHEMA "{schema}" TO "{role}"', "can create objects"),
        ('GRANT pg_execute_server_program TO "{role}"', "run programs on the server"),
        ('GRANT "{writer}" TO "{role}"', "can write to"),
        # Without INHERIT the role holds no privilege itself, but one SET ROLE would give it them.
        ('GRANT "{writer}" TO "{role}"; ALTER ROLE "{role}" NOINHERIT', "through its role"),
    ],
    ids=[
        "insert",
        "delete-truncate",
        "create",
        "server-program",
        "member-of-writer",
        "noinherit-member-of-writer",
    ],
)
def test_sql_refuses_a_role_that_can_write(
    pg_synced: str, pg_admin_engine, grant: str, why: str
) -> None:
    before = snapshot(pg_synced)
    with login_role(
        pg_admin_engine, pg_synced, 'GRANT UPDATE ON ALL TABLES IN SCHEMA "{schema}" TO "{role}"'
    ) as writer_url:
        writer = make_url(writer_url).username
        grants = (
            'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"',
            'GRANT SELECT ON ALL TABLES IN SCHEMA "{schema}" TO "{role}"',
            grant.replace("{writer}", writer),
        )
        with login_role(pg_admin_engine, pg_synced, *grants) as url:
            result = run("sql", COUNT, "--db", url)
            assert result.exit_code == 1, result.output
            assert why in result.stderr and "--allow-write-role" in result.stderr, result.stderr
            result = run("sql", COUNT, "--format", "json", "--allow-write-role", "--db", url)
            assert result.exit_code == 0, result.output
    assert snapshot(pg_synced) == before


# --------------------------------------------------------------------------------------------
# Another user's read leaves nothing that blocks the owner's sync (SQLite WAL)


def test_reading_an_idle_index_creates_no_files_and_detects_overlapping_writes(
    tmp_path: Path, outputs: Path
) -> None:
    db = tmp_path / "index.db"
    make_tree(outputs)
    assert run("sync", str(outputs), "--db", str(db)).exit_code == 0
    assert not Path(f"{db}-wal").exists()  # the sync's last connection checkpointed and removed it
    before = snapshot(resolve_db_url(db))
    for args in (["query", "--format", "json"], ["sql", COUNT], ["stats"], ["db", "current"]):
        result = run(*args, "--db", str(db))
        assert result.exit_code == 0, (args, result.output)
        assert snapshot(resolve_db_url(db)) == before, f"{args} left files behind"
    # A write that lands in the file during such a lock-free read is detected, not half-seen.
    engine = ckpt_index.read_only_engine(db)
    try:
        with engine.connect() as conn:
            assert conn.execute(text(COUNT)).scalar() == 3
        check_unlocked_read(engine)  # nothing happened meanwhile
        write_checkpoint(outputs / "exp9/checkpoints/epoch-09_step-000900.ckpt")
        assert run("sync", str(outputs), "--db", str(db)).exit_code == 0
        with pytest.raises(IndexChangedError, match="run the command again"):
            check_unlocked_read(engine)
    finally:
        engine.dispose()


def test_reading_while_a_writer_has_the_index_open_sees_its_commits(
    tmp_path: Path, outputs: Path
) -> None:
    """With a -wal present (a writer is at work) readers use it, and see committed rows."""
    db = tmp_path / "index.db"
    make_tree(outputs)
    assert run("sync", str(outputs), "--db", str(db)).exit_code == 0
    writer = sqlite3.connect(db)
    try:
        writer.execute("PRAGMA wal_autocheckpoint = 0")
        writer.execute("DELETE FROM checkpoint_metrics")
        writer.commit()
        assert Path(f"{db}-wal").stat().st_size > 0
        result = run(
            "sql",
            "SELECT count(*) AS n FROM checkpoint_metrics",
            "--format",
            "json",
            "--db",
            str(db),
        )
        assert json.loads(result.stdout) == [{"n": 0}]
    finally:
        writer.close()


def _as_user(uid: int, *args: str, **kwargs: Any) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            "setpriv",
            f"--reuid={uid}",
            f"--regid={uid}",
            "--clear-groups",
            sys.executable,
            "-m",
            "ckpt_index",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HOME": "/tmp"},
        **kwargs,
    )


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"),
    reason="needs root and setpriv to act as two users",
)
def test_another_users_read_does_not_block_the_owners_sync() -> None:
    """The reported failure, for real: uid 1002 reads uid 1001's index in a shared directory;
    before the fix it left -wal/-shm owned by 1002 and 1001's next sync failed with 'attempt
    to write a readonly database'."""
    shared = Path(tempfile.mkdtemp(prefix="ckpt-shared-", dir="/tmp"))  # pytest's tmp is 0700
    try:
        _owner_and_reader(shared)
    finally:
        shutil.rmtree(shared)


def _owner_and_reader(shared: Path) -> None:
    shared.chmod(0o1777)
    outputs = shared / "outputs"
    make_tree(outputs)
    for path in [outputs, *outputs.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    db = str(shared / "index.db")
    owner, other = 1001, 1002
    done = _as_user(owner, "sync", str(outputs), "--db", db, cwd=shared)
    assert done.returncode == 0, done.stderr
    for args in (["query", "--format", "json"], ["sql", COUNT], ["stats"]):
        done = _as_user(other, *args, "--db", db, cwd=shared)
        assert done.returncode == 0, (args, done.stderr)
        leftovers = {p.name: p.stat().st_uid for p in shared.glob("index.db-*")}
        assert all(uid == owner for uid in leftovers.values()), leftovers
    write_checkpoint(outputs / "exp9/checkpoints/epoch-09_step-000900.ckpt", **{"exp_name": "exp9"})
    for path in [outputs, *outputs.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    done = _as_user(owner, "sync", str(outputs), "--db", db, cwd=shared)
    assert done.returncode == 0, done.stderr
    assert "1 added" in done.stdout
