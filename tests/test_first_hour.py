"""Small things a new user hits in the first hour: option help, the words validate and sync use,
a quiet second sync, a guarded db downgrade, README install lines that work from a checkout."""

from __future__ import annotations

import json
import os
import pty
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from helpers.checkpoints import write_checkpoint
from helpers.files import age
from helpers.sidecars import seed_document

import ckpt_index.sync.roots as sync_roots_module
from ckpt_index.cli import cli
from ckpt_index.index.migrate import HEAD_REVISION
from ckpt_index.sidecar.files import sidecar_path_for


def _options():
    def walk(group: click.Group, prefix: tuple[str, ...]):
        for name, command in sorted(group.commands.items()):
            if isinstance(command, click.Group):
                yield from walk(command, prefix + (name,))
            else:
                for param in command.params:
                    if isinstance(param, click.Option) and not param.hidden:
                        yield " ".join(prefix + (name,)), param

    return list(walk(cli, ()))


@pytest.mark.parametrize(
    ("command", "option"), _options(), ids=lambda v: v if isinstance(v, str) else v.name
)
def test_every_option_has_help(command: str, option: click.Option) -> None:
    assert option.help, f"{command} {option.opts[0]} has no help text"


def test_query_filter_options_say_what_they_keep(invoke) -> None:
    text = invoke("query", "--help", db=False).output
    assert "Only this training_phase." in text
    assert "--min-epoch N  " in text and "Only epoch >= N." in text
    assert "--max-epoch N  " in text and "Only epoch <= N." in text


# --------------------------------------------------------------------------------------------
# A second sync right after the demo: files inside the racy window are re-read, not re-counted.


@pytest.fixture
def wide_racy_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 30 s racy window, so that every sync in the test re-reads the demo's files."""
    monkeypatch.setattr(sync_roots_module, "RACY_WINDOW_NS", 30 * 10**9)


def _sync_json(invoke_db, root: Path) -> dict:
    result = invoke_db("sync", str(root), "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_second_sync_after_demo_reports_nothing_changed(
    invoke_db, tmp_path: Path, wide_racy_window: None
) -> None:
    demo = tmp_path / "demo"
    assert invoke_db("demo", str(demo)).exit_code == 0
    for path in demo.rglob("*"):  # the demo dates its files in 2025: as if just written instead
        os.utime(path)
    first = _sync_json(invoke_db, demo)
    second = _sync_json(invoke_db, demo)
    assert first["added"] == first["checkpoints"] > 0
    # Every sidecar was read again (the racy window), and none of their rows changed.
    assert second["parsed"] == first["parsed"] > 0
    counts = {k: second[k] for k in ("added", "updated", "removed", "unchanged")}
    assert counts == {"added": 0, "updated": 0, "removed": 0, "unchanged": first["checkpoints"]}
    assert {k: second[k] for k in ("valid", "invalid", "inferred")} == {
        k: first[k] for k in ("valid", "invalid", "inferred")
    }


def test_demo_files_are_dated_like_the_runs_that_wrote_them(tmp_path: Path) -> None:
    """A demo tree looks like past runs: each checkpoint and sidecar has the modification time
    of its ``created_at`` (gc would keep a tree written a second ago as runs still training), and
    later epochs are newer."""
    import datetime as dt

    import yaml

    from ckpt_index.tools.demo import make_demo_tree

    paths = make_demo_tree(tmp_path / "demo")
    with_sidecars = [p for p in paths if sidecar_path_for(p).exists()]
    assert len(with_sidecars) == len(paths) - 1
    for ckpt in with_sidecars:
        created = yaml.safe_load(sidecar_path_for(ckpt).read_text())["created_at"]
        if isinstance(created, str):
            created = dt.datetime.fromisoformat(created)
        moment = created.replace(tzinfo=dt.timezone.utc).timestamp()
        assert ckpt.stat().st_mtime == sidecar_path_for(ckpt).stat().st_mtime == moment
    assert max(p.stat().st_mtime for p in (tmp_path / "demo").rglob("*")) < time.time() - 86_400
    first_run = sorted(p for p in paths if p.parent == paths[0].parent)
    mtimes = [p.stat().st_mtime for p in first_run]
    assert mtimes == sorted(mtimes) and len(set(mtimes)) == len(mtimes)


def test_racy_recheck_that_finds_a_change_counts_it_updated(
    invoke_db, tmp_path: Path, wide_racy_window: None
) -> None:
    ckpt = write_checkpoint(tmp_path / "outputs" / "e" / "a.ckpt", **{"metrics.hmean": 0.8431})
    sidecar = sidecar_path_for(ckpt)
    _sync_json(invoke_db, ckpt.parent)
    old = sidecar.stat()
    sidecar.write_text(sidecar.read_text().replace("hmean: 0.8431", "hmean: 0.8432"))
    os.utime(sidecar, ns=(old.st_atime_ns, old.st_mtime_ns))  # same size, same mtime
    summary = _sync_json(invoke_db, ckpt.parent)
    assert (summary["updated"], summary["unchanged"]) == (1, 0)
    shown = invoke_db("query", "--format", "json")
    assert json.loads(shown.output)[0]["hmean"] == 0.8432


# --------------------------------------------------------------------------------------------
# db downgrade drops tables: it asks first, or takes --yes.


def _revision(db: Path) -> str | None:
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "alembic_version" not in tables:
            return None
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return row[0] if row else None


@pytest.fixture
def upgraded(invoke, db_path: Path) -> Path:
    assert invoke("db", "upgrade", "--db", str(db_path)).exit_code == 0
    assert _revision(db_path) == HEAD_REVISION
    return db_path


def test_downgrade_without_a_terminal_needs_yes(invoke, upgraded: Path) -> None:
    result = invoke("db", "downgrade", "base", "--db", str(upgraded))
    assert result.exit_code == 2
    assert "drops the tables and columns" in result.output and "--yes" in result.output
    assert _revision(upgraded) == HEAD_REVISION
    result = invoke("db", "downgrade", "base", "--yes", "--db", str(upgraded))
    assert result.exit_code == 0 and result.output.strip() == "at revision base"
    assert _revision(upgraded) is None


def _downgrade_on_a_terminal(db: Path, answer: bytes) -> tuple[int, str]:
    """Run ``ckpt-index db downgrade base`` with a pseudo-terminal as stdin; type ``answer``."""
    main, secondary = pty.openpty()
    command = [sys.executable, "-m", "ckpt_index.cli", "db", "downgrade", "base", "--db", str(db)]
    with subprocess.Popen(
        command, stdin=secondary, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    ) as process:
        os.close(secondary)
        os.write(main, answer)
        output, _ = process.communicate(timeout=60)
    os.close(main)
    return process.returncode, output.decode()


def test_downgrade_on_a_terminal_asks_first(upgraded: Path) -> None:
    code, output = _downgrade_on_a_terminal(upgraded, b"n\n")
    assert code == 1 and "Go ahead? [y/N]" in output and "Aborted" in output
    assert _revision(upgraded) == HEAD_REVISION
    code, output = _downgrade_on_a_terminal(upgraded, b"y\n")
    assert code == 0 and "at revision base" in output
    assert _revision(upgraded) is None


# --------------------------------------------------------------------------------------------
# validate and sync name the same things with the same words.


def _every_kind(root: Path) -> dict[str, Path]:
    """A valid, an invalid, an unreadable, a stale, an orphaned and a sidecar-less checkpoint."""
    valid = write_checkpoint(root / "a/valid.ckpt", seed_document())
    invalid = write_checkpoint(root / "a/invalid.ckpt", **{"metrics.hmean": 1.7})
    unreadable = write_checkpoint(root / "a/unreadable.ckpt", seed_document())
    unreadable.write_bytes(unreadable.read_bytes()[:100])
    stale = write_checkpoint(root / "a/stale.ckpt", seed_document())
    orphan = write_checkpoint(root / "a/orphan.ckpt", seed_document(), ckpt_file=False)
    bare = write_checkpoint(root / "a/bare.ckpt")
    age(root)
    age(sidecar_path_for(stale))  # an hour older again: its checkpoint was replaced after
    return {
        "valid": valid,
        "invalid": sidecar_path_for(invalid),
        "unreadable": unreadable,
        "stale": sidecar_path_for(stale),
        "orphaned sidecar": sidecar_path_for(orphan),
        "without sidecar": bare,
    }


def _counts(line: str) -> dict[str, int]:
    return {m[2]: int(m[1]) for m in re.finditer(r"(\d+) ([a-z][a-z ]*[a-z])", line)}


def test_validate_and_sync_use_the_same_words(invoke, outputs: Path) -> None:
    kinds = _every_kind(outputs)
    checked = invoke("validate", str(outputs))
    synced = invoke("sync", str(outputs))
    assert checked.exit_code == 1 and synced.exit_code == 0, synced.output
    for word, path in kinds.items():
        if word == "valid":
            continue
        line = f"{word}: {path}"
        assert any(x.startswith(line) for x in checked.stdout.splitlines()), (word, checked.stdout)
        if word in ("invalid", "unreadable"):  # sync lists only what it could not use
            assert any(x.startswith(line) for x in synced.stderr.splitlines()), synced.stderr
    by_validate = _counts(checked.stdout.splitlines()[-1])
    by_sync = _counts(synced.stdout.splitlines()[-1].split(" unchanged; ")[1])
    shared = ("invalid", "unreadable", "without sidecar", "orphaned sidecars", "stale")
    expected = {"invalid": 1, "unreadable": 1, "without sidecar": 1, "orphaned sidecars": 1}
    assert {k: by_validate[k] for k in shared} == {**expected, "stale": 1}
    assert {k: by_sync[k] for k in shared} == {k: by_validate[k] for k in shared}
    # validate counts the sidecars that are valid; sync the rows whose status is valid (the
    # unreadable checkpoint's sidecar is valid, its row is not), and the statuses of the rest.
    assert by_validate["valid sidecars"] == 4
    assert (by_sync["valid"], by_sync["inferred"], by_sync["missing"]) == (3, 1, 0)


# --------------------------------------------------------------------------------------------
# The README's install lines work from a checkout: the package is not on PyPI.

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_installs_from_the_checkout() -> None:
    text = README.read_text()
    installs = re.findall(r"pip install ([^`\n#]*)", text)
    assert installs
    for arguments in installs:
        targets = [a.strip("\"'") for a in arguments.split() if not a.startswith("-")]
        ours = [t for t in targets if t.startswith(".") or t.startswith("ckpt-index")]
        assert all(t == "." or t.startswith(".[") for t in ours), arguments
    assert 'pip install ".[pandas]"' in text and 'pip install ".[postgres]"' in text


def test_readme_says_datasette_opens_the_index_file() -> None:
    text = README.read_text()
    assert "`datasette ckpt_index.db`" in text and "datasette -i" in text


def test_readme_documents_shell_completion() -> None:
    text = README.read_text()
    section = text[text.index("## Shell completion") :]
    for shell in ("bash", "zsh", "fish"):
        assert f"_CKPT_INDEX_COMPLETE={shell}_source ckpt-index" in section
