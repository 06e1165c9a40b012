"""An installed wheel, not only the editable checkout, creates and upgrades a database: the
migration scripts ship inside the package and the alembic configuration is built in code, so
nothing from the source tree (alembic.ini, migrations/) is needed at run time.

The wheel is built from a copy of the source tree (so the checkout gets no build/ directory) and
installed with its dependencies into a fresh virtual environment without system site-packages;
every command then runs from a directory outside the repository.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from contextlib import closing
from pathlib import Path

import pytest

from ckpt_index.index.migrate import HEAD_REVISION, known_revisions

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
OLD_REVISIONS = Path(__file__).parent / "data" / "old_revisions"


def _clean_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "CKPT_INDEX_DB")
    }
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _run(args: list[str | Path], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, (
        f"{args} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    )
    return result


class Installed:
    def __init__(self, root: Path, wheel: Path, venv: Path) -> None:
        self.root, self.wheel, self.venv = root, wheel, venv
        self.python = venv / "bin" / "python"
        self.cli = venv / "bin" / "ckpt-index"

    def __call__(self, *args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
        return _run([self.cli, *args], cwd=cwd)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".venv",
            ".git",
            "build",
            "dist",
            "*.egg-info",
            "__pycache__",
            ".pytest_cache",
            ".hypothesis",
            "*.db",
            "*.db-*",
            "outputs",
            "demo_outputs",
            "tests",
        ),
    )
    wheels = root / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheels, source], cwd=root)
    (wheel,) = wheels.glob("ckpt_index-*.whl")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=root)
    _run([venv / "bin" / "python", "-m", "pip", "install", "-q", wheel], cwd=root)
    return Installed(root, wheel, venv)


@pytest.fixture
def workdir(installed: Installed, tmp_path: Path) -> Path:
    """A directory outside the repository (and without alembic.ini) to run commands from."""
    work = tmp_path / "work"
    work.mkdir()
    assert REPO not in work.parents
    return work


def _revision(db: Path) -> str | None:
    with closing(sqlite3.connect(db)) as con:
        rows = con.execute("SELECT version_num FROM alembic_version").fetchall()
    return rows[0][0] if rows else None


def _count(db: Path, table: str) -> int:
    with closing(sqlite3.connect(db)) as con:
        return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_wheel_ships_the_migrations(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    assert "ckpt_index/py.typed" in names  # PEP 561: type checkers read the package's hints
    assert "ckpt_index/index/migrations/env.py" in names
    assert "ckpt_index/index/migrations/script.py.mako" in names
    assert "ckpt_index/index/migrations/versions/0001_initial.py" in names
    shipped = {Path(n).name for n in names if n.startswith("ckpt_index/index/migrations/versions/")}
    in_checkout = {
        p.name for p in (REPO / "ckpt_index" / "index" / "migrations" / "versions").glob("*.py")
    }
    assert in_checkout <= shipped, f"revisions missing from the wheel: {in_checkout - shipped}"
    assert not any(n.startswith(("tests/", "migrations/")) for n in names)


def test_the_installed_package_is_imported(installed: Installed, workdir: Path) -> None:
    out = _run(
        [
            installed.python,
            "-c",
            "import sys, ckpt_index, ckpt_index.index.migrate as migrate; "
            "print(ckpt_index.__file__); print(migrate.MIGRATIONS_DIR); "
            "print(sys.flags.no_user_site, sys.path)",
        ],
        cwd=workdir,
    ).stdout.splitlines()
    site_packages = installed.venv / "lib"
    package_file, migrations = Path(out[0]), Path(out[1])
    assert site_packages in package_file.parents and "site-packages" in package_file.parts
    assert site_packages in migrations.parents
    assert str(REPO) not in out[2], "the checkout is on the installed interpreter's path"
    # No system site-packages: the dev environment's editable install is not visible.
    cfg = (installed.venv / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = false" in cfg


def test_installed_cli_creates_syncs_and_queries(installed: Installed, workdir: Path) -> None:
    db = workdir / "x.db"
    assert installed("db", "upgrade", "--db", "x.db", cwd=workdir).stdout.strip() == (
        f"at revision {HEAD_REVISION}"
    )
    assert _revision(db) == HEAD_REVISION
    assert installed("db", "current", "--db", "x.db", cwd=workdir).stdout.strip() == (
        f"{HEAD_REVISION} (up to date)"
    )
    history = installed("db", "history", cwd=workdir).stdout
    assert len(history.strip().splitlines()) == len(known_revisions())
    assert f"-> {HEAD_REVISION}:" in history.splitlines()[0]

    assert "wrote" in installed("demo", "d", cwd=workdir).stdout
    assert "synced" in installed("sync", "d", "--db", "x.db", cwd=workdir).stdout
    best = installed("query", "--best-by", "hmean", "--db", "x.db", cwd=workdir).stdout
    assert "hmean" in best and ".ckpt" in best
    assert len(best.strip().splitlines()) == 2  # header and the one best checkpoint
    assert _count(db, "checkpoints") > 0


def test_installed_cli_downgrades_and_upgrades(installed: Installed, workdir: Path) -> None:
    installed("db", "upgrade", "--db", "y.db", cwd=workdir)
    downgraded = installed("db", "downgrade", "base", "--yes", "--db", "y.db", cwd=workdir)
    assert downgraded.stdout.strip() == "at revision base"
    assert _revision(workdir / "y.db") is None
    installed("db", "upgrade", "--db", "y.db", cwd=workdir)
    assert _revision(workdir / "y.db") == HEAD_REVISION


@pytest.mark.parametrize("fixture", sorted(OLD_REVISIONS.glob("*.db")), ids=lambda p: p.stem)
@pytest.mark.parametrize("how", ["db upgrade", "sync"])
def test_installed_cli_upgrades_an_old_database(
    installed: Installed, workdir: Path, fixture: Path, how: str
) -> None:
    db = workdir / "old.db"
    shutil.copyfile(fixture, db)
    rows, metrics = _count(db, "checkpoints"), _count(db, "checkpoint_metrics")
    if how == "db upgrade":
        installed("db", "upgrade", "--db", db, cwd=workdir)
    else:  # opening for writing upgrades; an empty root prunes none of the fixture's rows
        (workdir / "empty").mkdir()
        installed("sync", workdir / "empty", "--db", db, cwd=workdir)
    assert _revision(db) == HEAD_REVISION
    out = installed("query", "--include-orphans", "--format", "jsonl", "--db", db, cwd=workdir)
    assert len(out.stdout.strip().splitlines()) == rows
    assert (_count(db, "checkpoints"), _count(db, "checkpoint_metrics")) == (rows, metrics)
