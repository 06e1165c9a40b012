"""The query table fits the terminal; --columns picks columns in every format; size and
created_at are columns; an empty result is [] in JSON and a header in CSV.

The demo tree (64 checkpoints, experiment names of ~55 characters, paths of ~100) is synced into
a real index; the table is read from a real process on a pseudo-terminal of the size asked for,
and from the in-process CLI with $COLUMNS/$LINES.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from ckpt_index.cli import query_commands
from ckpt_index.query.table import elide, human_size

DEMO_CHECKPOINTS = 64
MORE = "\u2026 {} more (use --limit/--format)"


@pytest.fixture
def demo(invoke, tmp_path: Path) -> Path:
    root = tmp_path / "demo_outputs"
    assert invoke("demo", str(root)).exit_code == 0
    assert invoke("sync", str(root)).exit_code == 0
    return root


def _on_tty(args: list[str], cols: int, rows: int, cwd: Path) -> str:
    """``ckpt-index ARGS`` run with its stdout on a pseudo-terminal of COLSxROWS."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["PYTHONIOENCODING"] = "utf-8"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ckpt_index.cli", *args],
        stdout=follower,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=env,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the follower side closed (Linux reports EIO)
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(timeout=60)
    os.close(leader)
    return b"".join(chunks).decode().replace("\r\n", "\n")


def _assert_screen(text: str, cols: int, rows: int) -> list[str]:
    """The lines fit the screen (one screen line each, room left for the prompt), the header
    first and the "more" line last; the rows shown and left out add up to the demo's."""
    lines = text.rstrip("\n").split("\n")
    assert len(lines) <= rows - 1
    assert max(len(line) for line in lines) <= cols
    assert lines[0].split()[:2] == ["hmean", "epoch"] and lines[0].split()[-1] == "path"
    shown = len(lines) - 2
    assert lines[-1] == MORE.format(DEMO_CHECKPOINTS - shown)
    assert shown == rows - 3  # a full screen: header, rows, the "more" line, the prompt
    return lines


@pytest.mark.parametrize("cols", [80, 160])
def test_table_fits_a_real_terminal(demo: Path, db_path: Path, cols: int) -> None:
    text = _on_tty(["query", "--db", str(db_path)], cols, 24, demo.parent)
    lines = _assert_screen(text, cols, 24)
    # Paths are relative to the current directory and keep their file name.
    assert lines[1].endswith("/epoch-00_step-000271.ckpt")
    assert " demo_outputs/" in lines[1] or " demo\u2026" in lines[1]
    if cols == 160:  # room for every default column
        assert lines[0].split() == [
            *("hmean", "epoch", "step", "exp_name", "arch", "encoder", "phase"),
            *("size", "created", "path"),
        ]


@pytest.mark.parametrize("cols", [80, 160])
def test_table_fits_columns_and_lines_from_the_environment(
    invoke, demo: Path, monkeypatch: pytest.MonkeyPatch, cols: int
) -> None:
    # On a terminal, $COLUMNS and $LINES override the size the terminal reports.
    monkeypatch.setattr(query_commands, "_output_is_terminal", lambda: True)
    monkeypatch.setenv("COLUMNS", str(cols))
    monkeypatch.setenv("LINES", "24")
    result = invoke("query")
    assert result.exit_code == 0
    _assert_screen(result.output, cols, 24)


def test_a_pipe_gets_the_plain_table(invoke, demo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Whatever the environment says: text piped to grep or a file must not lose any of itself.
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("LINES", "24")
    lines = invoke("query").output.rstrip("\n").split("\n")
    assert len(lines) == 1 + DEMO_CHECKPOINTS  # every row, no "more" line
    assert "\u2026" not in "".join(lines)  # nothing elided
    assert lines[1].endswith(
        "demo_outputs/ocr_aug_v2-craft-resnet18_training_20251001_165800/checkpoints/"
        "epoch-00_step-000271.ckpt"
    )


@pytest.mark.parametrize(
    ("args", "header"),
    [
        (["--sort", "train/loss"], "train/loss"),
        (["--where", "val/loss < 0.03"], "val/loss"),
        (["--best-by", "train/loss"], "train/loss"),
        (["--best-by", "val/loss", "--group-by", "encoder"], "val/loss"),
    ],
)
def test_the_column_ranked_sorted_or_filtered_by_is_shown(
    invoke, demo: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], header: str
) -> None:
    monkeypatch.setattr(query_commands, "_output_is_terminal", lambda: True)
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("LINES", "24")
    result = invoke("query", *args)
    assert result.exit_code == 0, result.output
    lines = result.output.rstrip("\n").split("\n")
    assert lines[0].split()[0] == header
    assert lines[0].split()[-1] == "path"
    assert all(len(line) <= 80 for line in lines)
    assert all(line.split()[0] != "-" for line in lines[1:] if not line.startswith("\u2026"))


COLUMNS = "path,size,created,metrics.val/loss,hmean"


def test_columns_pick_the_same_fields_in_every_format(invoke, demo: Path) -> None:
    args = ("query", "--columns", COLUMNS, "--sort", "hmean:desc", "--limit", "3")
    records = json.loads(invoke(*args, "--format", "json").output)
    assert [list(r) for r in records] == [
        ["checkpoint_path", "ckpt_size", "created_at", "hmean", "metrics"]
    ] * 3
    assert all(set(r["metrics"]) == {"val/loss"} for r in records)
    best = records[0]
    assert best["ckpt_size"] == os.path.getsize(best["checkpoint_path"])  # bytes
    assert best["created_at"].startswith("2025-10-")

    jsonl = [json.loads(line) for line in invoke(*args, "--format", "jsonl").output.splitlines()]
    assert jsonl == records

    rows = list(csv.reader(io.StringIO(invoke(*args, "--format", "csv").output)))
    assert rows[0] == ["checkpoint_path", "ckpt_size", "created_at", "val/loss", "hmean"]
    assert rows[1][0] == best["checkpoint_path"]
    assert float(rows[1][3]) == best["metrics"]["val/loss"]

    table = invoke(*args).output.splitlines()
    assert table[0].split() == ["path", "size", "created", "val/loss", "hmean"]
    assert table[1].split()[1] == human_size(best["ckpt_size"])
    assert " ".join(table[1].split()[2:4]) == best["created_at"][:16].replace("T", " ")

    paths = invoke(*args, "--format", "paths").output.splitlines()
    assert paths == [r["checkpoint_path"] for r in records]  # paths ignores --columns


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ("params.lr", "unknown column 'params.lr'"),
        ("hmaen", "unknown column 'hmaen' (did you mean 'hmean'?)"),
        ("path,,hmean", "--columns takes names separated by commas"),
    ],
)
def test_unknown_columns_are_usage_errors(invoke, demo: Path, columns: str, message: str) -> None:
    result = invoke("query", "--columns", columns)
    assert result.exit_code == 2
    assert message in result.output


def test_a_metric_only_some_rows_have_is_a_column(invoke, demo: Path) -> None:
    # train/loss is in the index; the rows of the one filter here may lack it: still a column.
    result = invoke("query", "--columns", "path,train/loss", "--limit", "1", "--format", "csv")
    assert result.exit_code == 0
    assert result.output.splitlines()[0] == "checkpoint_path,train/loss"


def test_size_and_created_at_are_in_show(invoke, demo: Path) -> None:
    ckpt = next(demo.rglob("epoch-00_step-000271.ckpt"))
    record = json.loads(invoke("show", str(ckpt)).output)
    assert record["ckpt_size"] == ckpt.stat().st_size
    assert record["created_at"].startswith("2025-10-")  # the sidecar's, as the demo wrote it


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [("json", "[]\n"), ("jsonl", ""), ("table", ""), ("paths", "")],
)
def test_an_empty_result(invoke, demo: Path, fmt: str, expected: str) -> None:
    result = invoke("query", "--where", "hmean > 5", "--format", fmt)
    assert result.exit_code == 1
    assert result.stdout == expected
    assert "no checkpoint matches" in result.stderr


def test_an_empty_result_in_csv_is_its_header(invoke, demo: Path) -> None:
    full = invoke("query", "--format", "csv", "--limit", "1").stdout.splitlines()[0]
    result = invoke("query", "--where", "hmean > 5", "--format", "csv")
    assert result.exit_code == 1
    assert result.stdout.splitlines()[0].startswith(
        "location,checkpoint_path,sidecar_path,exp_name"
    )
    assert full.startswith(result.stdout.strip())
    picked = invoke("query", "--where", "hmean > 5", "--format", "csv", "--columns", "path,size")
    assert picked.stdout == "checkpoint_path,ckpt_size\n"


@pytest.mark.parametrize(
    ("text", "width", "expected"),
    [
        ("short", 10, "short"),
        ("abcdefghij", 5, "ab\u2026ij"),
        ("outputs/exp_with_a_long_name/checkpoints/epoch-03.ckpt", 30, None),
    ],
)
def test_elide_keeps_both_ends(text: str, width: int, expected: str | None) -> None:
    got = elide(text, width, "\u2026", path=expected is None)
    assert len(got) <= width
    if expected is not None:
        assert got == expected
    else:
        assert got.endswith("/epoch-03.ckpt") and got.startswith("outputs/")


@pytest.mark.parametrize(
    ("size", "shown"), [(0, "0B"), (1023, "1023B"), (1536, "1.5K"), (50 * 2**20, "50M")]
)
def test_human_size(size: int, shown: str) -> None:
    assert human_size(size) == shown
