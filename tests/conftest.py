"""Shared fixtures: a temporary index, a temporary outputs tree, sidecar writers, the CLI runner."""

from __future__ import annotations

import copy
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from ckpt_index.cli import cli
from ckpt_index.sidecar.files import dump_document, sidecar_path_for

DATA = Path(__file__).parent / "data"
SEED_SIDECARS = sorted(DATA.glob("seed_*.metadata.yaml"))


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


def seed_document(name: str = "seed_callback") -> dict[str, Any]:
    """A deep copy of one of the seed sidecars as a mapping."""
    return yaml.safe_load((DATA / f"{name}.metadata.yaml").read_text())


def tiny_checkpoint(tag: str = "") -> bytes:
    """The bytes of a tiny but well-formed checkpoint (torch's zip layout, plain data only).

    The sync checks that a checkpoint beside a sidecar is a complete archive, so stand-ins for
    checkpoint files must be real ones; ``tag`` varies their content and size.
    """
    import io
    import pickle
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"epoch": 0, "tag": tag}, protocol=2))
        archive.writestr("archive/byteorder", "little")
    return buffer.getvalue()


def write_checkpoint(
    ckpt: Path,
    document: dict[str, Any] | str | None = None,
    *,
    ckpt_file: bool = True,
    **changes: Any,
) -> Path:
    """Write ``ckpt`` (a tiny well-formed checkpoint) and its sidecar.

    ``document`` is a mapping (default: the seed callback example), raw YAML text, or None for
    no sidecar. ``changes`` set dotted keys, e.g. ``**{"metrics.hmean": 0.9}``.
    """
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    if ckpt_file:
        ckpt.write_bytes(tiny_checkpoint())
    if document is None and not changes:
        return ckpt
    if isinstance(document, str):
        sidecar_path_for(ckpt).write_text(document)
        return ckpt
    doc = copy.deepcopy(document) if document is not None else seed_document()
    for dotted, value in changes.items():
        target = doc
        *parents, last = dotted.split(".")
        for key in parents:
            target = target.setdefault(key, {})
        target[last] = value
    sidecar_path_for(ckpt).write_text(dump_document(doc))
    return ckpt


@pytest.fixture
def invoke(db_path: Path) -> Callable[..., Any]:
    """Run the CLI in-process against the temporary index: ``invoke("query", "--best-by", "hmean")``."""
    runner = CliRunner()

    def run(*args: str, db: bool = True, input: str | None = None):
        argv = list(args)
        if db and argv and argv[0] not in ("validate", "demo", "db") and "--db" not in argv:
            argv += ["--db", str(db_path)]
        return runner.invoke(cli, argv, input=input, catch_exceptions=False)

    return run


# --------------------------------------------------------------------------------------------
# Backends: every index test that takes `db_url` runs on SQLite and on the real PostgreSQL server.

PG_ADMIN_URL = os.environ.get(
    "CKPT_INDEX_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


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


def _pg_url_with_schema(schema: str) -> str:
    # libpq `options`: every connection of this URL resolves unqualified names in `schema`.
    separator = "&" if "?" in PG_ADMIN_URL else "?"
    return f"{PG_ADMIN_URL}{separator}options=-csearch_path%3D{schema}"


@pytest.fixture
def pg_url(request, pg_admin_engine) -> Any:
    """A URL on a fresh PostgreSQL schema of its own (dropped afterwards): runs never meet."""
    from sqlalchemy import text

    schema = f"ckpt_test_{uuid.uuid4().hex[:12]}"
    with pg_admin_engine.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    yield _pg_url_with_schema(schema)
    with pg_admin_engine.connect() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


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
