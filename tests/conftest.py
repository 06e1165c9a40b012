"""Shared fixtures: a temporary index, a temporary outputs tree, the CLI runner, both backends.

Helper functions the tests share (checkpoint and sidecar writers, PostgreSQL roles, ...) live in
the ``helpers`` package beside this file; test modules import them from there, never from here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from helpers.browser import CHROMIUM
from helpers.postgres import PG_ADMIN_URL, schema_url

from ckpt_index.cli import cli


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Path of a fresh SQLite index file (not created yet)."""
    return tmp_path / "index.db"


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    root = tmp_path / "outputs"
    root.mkdir()
    return root


@pytest.fixture(autouse=True)
def _no_ambient_db(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Never let a test touch a developer's ./ckpt_index.db or $CKPT_INDEX_DB.
    monkeypatch.delenv("CKPT_INDEX_DB", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def invoke(db_path: Path) -> Callable[..., Any]:
    """Run the CLI in-process against the temporary index.

    ``invoke("query", "--best-by", "hmean")``
    """
    runner = CliRunner()

    def run(*args: str, db: bool = True, input: str | None = None):
        argv = list(args)
        if db and argv and argv[0] not in ("validate", "demo", "db") and "--db" not in argv:
            argv += ["--db", str(db_path)]
        return runner.invoke(cli, argv, input=input, catch_exceptions=False)

    return run


# --------------------------------------------------------------------------------------------
# Backends: every index test that takes `db_url` runs on SQLite and on the real PostgreSQL server.


@pytest.fixture(scope="session")
def pg_admin_engine():
    """An engine on the test server's database; skips (fails under CI=true) when unreachable."""
    from sqlalchemy import create_engine, text

    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001
        engine.dispose()
        message = f"PostgreSQL at {PG_ADMIN_URL} is unreachable: {exc.__class__.__name__}: {exc}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message + " (CI=true: the PostgreSQL backend must be tested)")
        pytest.skip(message)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_url(request, pg_admin_engine) -> Any:
    """A URL on a fresh PostgreSQL schema of its own (dropped afterwards): runs never meet."""
    with schema_url(pg_admin_engine) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path: Path) -> str:
    """The index as a URL, once per backend."""
    if request.param == "sqlite":
        return "sqlite:///" + str(tmp_path / "index.db")
    return request.getfixturevalue("pg_url")


@pytest.fixture
def invoke_db(db_url: str) -> Callable[..., Any]:
    """Like `invoke`, against `db_url` (so on both backends)."""
    runner = CliRunner()

    def run(*args: str, input: str | None = None):
        argv = list(args)
        if argv and argv[0] not in ("validate", "demo", "convert") and "--db" not in argv:
            argv += ["--db", db_url]
        return runner.invoke(cli, argv, input=input, catch_exceptions=False)

    return run


# --------------------------------------------------------------------------------------------
# Browser tests (tests/test_web_browser*.py; see tests/helpers/browser.py)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """pytest-playwright's browser, launched from Debian's Chromium (never downloaded)."""
    return {**browser_type_launch_args, "executable_path": CHROMIUM}


@pytest.fixture
def watched(page: Any) -> dict[str, list[str]]:
    """Dialogs opened and console errors (a CSP violation is one) while the test runs."""
    seen: dict[str, list[str]] = {"dialogs": [], "errors": []}

    def on_dialog(dialog: Any) -> None:
        seen["dialogs"].append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.on("console", lambda m: m.type == "error" and seen["errors"].append(m.text))
    page.on("pageerror", lambda exc: seen["errors"].append(str(exc)))
    return seen
