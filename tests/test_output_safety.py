"""Output that cannot be abused (issue 8, item 8).

Experiment and file names come from anyone who can write a file under a synced root. In table
output (meant for a terminal) control characters, C1 codes and bidirectional overrides are shown
escaped; JSON keeps the exact value (escaped by JSON itself); `--format paths` never splits a
name holding a newline (it refuses, pointing at `-0`, which prints NUL-ended paths like
`find -print0`); an out-of-range number in `--where` is a usage error with a caret.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from helpers.checkpoints import write_checkpoint

from ckpt_index.cli import cli
from ckpt_index.index.engine import is_sqlite
from ckpt_index.query.render import escape_control
from ckpt_index.query.where import WhereError, parse_where

#: What a terminal must never receive raw from a value.
RAW_CONTROL = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)
EVIL_EXP = "evil\x1b]0;owned\x07\u202egnp.exe\x9b31m\rhidden"
EVIL_ENCODER = "res\x1b[2Jnet"
EVIL_DIR = "exp\x1b[31mred\u2066"


def run(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture
def hostile_index(
    db_url: str, outputs: Path, pg_admin_engine_or_none
) -> tuple[str, dict[str, Path]]:
    ckpts = {
        "evil": write_checkpoint(
            outputs / EVIL_DIR / "checkpoints" / "epoch-01_step-000100.ckpt",
            **{
                "exp_name": EVIL_EXP,
                "model.encoder.model_name": EVIL_ENCODER,
                "metrics.hmean": 0.9,
                "training.epoch": 1,
            },
        ),
        "newline": write_checkpoint(
            outputs / "plain" / "checkpoints" / "two\nlines.ckpt",
            **{"exp_name": "plain", "metrics.hmean": 0.5, "training.epoch": 2},
        ),
        "plain": write_checkpoint(
            outputs / "plain" / "checkpoints" / "epoch-03_step-000300.ckpt",
            **{"exp_name": "plain", "metrics.hmean": 0.4, "training.epoch": 3},
        ),
    }
    result = run("sync", str(outputs), "--db", db_url)
    assert result.exit_code == 0, result.output
    return db_url, ckpts


@pytest.fixture
def pg_admin_engine_or_none(request, db_url: str):
    return None if is_sqlite(db_url) else request.getfixturevalue("pg_admin_engine")


def test_query_table_escapes_control_characters(hostile_index) -> None:
    url, ckpts = hostile_index
    result = run("query", "--db", url, "--best-by", "hmean")
    assert result.exit_code == 0, result.output
    assert not RAW_CONTROL.search(result.stdout), repr(result.stdout)
    assert "evil\\x1b]0;owned\\x07\\u202egnp.exe\\x9b31m\\rhidden" in result.stdout
    assert "exp\\x1b[31mred\\u2066" in result.stdout  # the path column too
    assert "res\\x1b[2Jnet" in result.stdout
    # Every row, including the name with a newline, stays on its own line.
    result = run("query", "--db", url, "--sort", "epoch")
    lines = result.stdout.splitlines()
    assert len(lines) == 1 + 3 and "two\\nlines.ckpt" in lines[2], lines


def test_json_keeps_the_exact_values(hostile_index) -> None:
    url, ckpts = hostile_index
    result = run("query", "--db", url, "--format", "json", "--sort", "epoch")
    assert not RAW_CONTROL.search(result.stdout)  # JSON escapes them itself
    records = json.loads(result.stdout)
    assert [r["checkpoint_path"] for r in records] == [
        str(ckpts["evil"]),
        str(ckpts["newline"]),
        str(ckpts["plain"]),
    ]
    assert records[0]["exp_name"] == EVIL_EXP and records[0]["encoder"] == EVIL_ENCODER


def test_sql_and_stats_tables_escape_control_characters(hostile_index, request) -> None:
    url, _ = hostile_index
    if not is_sqlite(url):
        from helpers.pg_roles import login_role

        context = login_role(request.getfixturevalue("pg_admin_engine"), url)
        reader = context.__enter__()
        request.addfinalizer(lambda: context.__exit__(None, None, None))
    else:
        reader = url
    result = run(
        "sql",
        'SELECT exp_name, encoder, checkpoint_path AS "p\x1b[5m" FROM checkpoints',
        "--db",
        reader,
    )
    assert result.exit_code == 0, result.output
    assert not RAW_CONTROL.search(result.stdout), repr(result.stdout)
    assert "evil\\x1b]0;owned" in result.stdout and "p\\x1b[5m" in result.stdout
    result = run("stats", "--db", url)
    assert result.exit_code == 0, result.output
    assert not RAW_CONTROL.search(result.stdout) and "res\\x1b[2Jnet" in result.stdout


def test_paths_with_a_newline_are_refused_with_a_hint(hostile_index) -> None:
    url, _ = hostile_index
    result = run("query", "--db", url, "--format", "paths")
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert "-0" in result.stderr and "two\\nlines.ckpt" in result.stderr
    assert not RAW_CONTROL.search(result.stderr)
    # Paths without a newline still print one per line.
    result = run("query", "--db", url, "--format", "paths", "--exp", "evil*")
    assert result.exit_code == 0
    assert result.stdout.count("\n") == 1 and "\x1b[31m" in result.stdout  # data, kept exact


def test_paths_null_separated(hostile_index) -> None:
    url, ckpts = hostile_index
    result = run("query", "--db", url, "--format", "paths", "-0", "--sort", "epoch")
    assert result.exit_code == 0, result.output
    assert result.stdout.endswith("\0") and "\n" not in result.stdout.replace("two\nlines", "")
    assert result.stdout.split("\0")[:-1] == [
        str(ckpts["evil"]),
        str(ckpts["newline"]),
        str(ckpts["plain"]),
    ]
    result = run("query", "--db", url, "--format", "paths", "--null", "--best-by", "hmean")
    assert result.stdout == str(ckpts["evil"]) + "\0"


def test_null_needs_the_paths_format(hostile_index) -> None:
    url, _ = hostile_index
    result = run("query", "--db", url, "-0")
    assert result.exit_code == 2 and "--format paths" in result.output


def test_escape_control_covers_c0_c1_and_bidi() -> None:
    for code in [
        *range(0x00, 0x20),
        0x7F,
        *range(0x80, 0xA0),
        0x061C,
        0x200E,
        0x200F,
        0x2028,
        0x2029,
        *range(0x202A, 0x202F),
        *range(0x2066, 0x206A),
    ]:
        shown = escape_control(f"a{chr(code)}b")
        assert not RAW_CONTROL.search(shown) and chr(code) not in shown, hex(code)
        assert shown.startswith("a\\") and shown.endswith("b")
    assert escape_control("resnet50 é ü 中文 ✓") == "resnet50 é ü 中文 ✓"
    assert escape_control("\x1b") == "\\x1b" and escape_control("\u202e") == "\\u202e"
    assert escape_control("a\tb\nc\rd") == "a\\tb\\nc\\rd"


# --------------------------------------------------------------------------------------------
# --where: numbers out of range are usage errors with a caret under the token


HUGE = "9" * 5000


@pytest.mark.parametrize(
    "expression, token",
    [
        (f"epoch = {HUGE}", HUGE),
        (f"epoch = -{HUGE}", f"-{HUGE}"),
        ("epoch > 9223372036854775808", "9223372036854775808"),
        (f"hmean > 0.5 and epoch in (1, {HUGE})", HUGE),
        ("hmean > 1e999", "1e999"),
        ("hmean < -1.5e400", "-1.5e400"),
        (f"hmean < 1{'0' * 400}.0", f"1{'0' * 400}.0"),
    ],
)
def test_out_of_range_numbers_are_usage_errors(expression: str, token: str, invoke) -> None:
    with pytest.raises(WhereError) as info:
        parse_where(expression)
    assert info.value.position == expression.index(token)
    assert "out of range" in info.value.message
    write_checkpoint(
        Path("outputs/a/checkpoints/epoch-01_step-000001.ckpt"), **{"metrics.hmean": 0.5}
    )
    assert invoke("sync", "outputs").exit_code == 0
    result = invoke("query", "--where", expression)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "out of range" in result.stderr
    line, caret = [s for s in result.stderr.splitlines() if s.startswith("  ")][-2:]
    assert caret.index("^") == line.index(token)


def test_in_range_extremes_still_work() -> None:
    assert parse_where("epoch = 9223372036854775807").value == 2**63 - 1
    assert parse_where("epoch = -9223372036854775807").value == -(2**63 - 1)
    assert parse_where(f"epoch = {'0' * 5000}7").value == 7  # leading zeros are not magnitude
    assert parse_where("hmean < 1.7e308").value == 1.7e308
    assert parse_where("hmean > 1e-999").value == 0.0


def test_csv_keeps_the_exact_bytes(hostile_index) -> None:
    """CSV is data: values arrive unchanged (click.echo would strip ANSI sequences off a pipe)."""
    import csv
    import io

    url, ckpts = hostile_index
    result = run("query", "--db", url, "--format", "csv", "--exp", "evil*")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(r["exp_name"], r["checkpoint_path"]) for r in rows] == [(EVIL_EXP, str(ckpts["evil"]))]
