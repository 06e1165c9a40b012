"""Rendering query results: table, json, jsonl, csv and paths.

Values come from files anyone may name: the table, meant for a terminal, shows control characters
(C0, DEL, C1) and bidirectional overrides escaped (``\\x1b``, ``\\u202e``) so that a name cannot
move the cursor, retitle the window or reorder what is shown. JSON escapes them itself; CSV and
paths are data and keep the bytes, except that a paths line never holds a newline (``-0`` does).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from ckpt_index.query import table
from ckpt_index.query.columns import Column, csv_columns, select
from ckpt_index.query.table import Screen, default_columns, display_path, human_size, rows_that_fit

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


class PathsFormatError(ValueError):
    """A path that one-per-line output would split (it holds a newline)."""


def escape_control(text: str) -> str:
    """``text`` with every character that could steer a terminal written as an escape."""
    return _UNSAFE.sub(_escape_char, text)


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return escape_control(str(value))


def _table_cell(column: Column, value: Any) -> str:
    """A value as the table shows it: paths relative, sizes human, times to the minute."""
    if value is None:
        return "-"
    if column.metric:
        return _cell(value)
    if column.param:
        return _param_cell(value)
    if column.name.endswith("_path"):
        return escape_control(display_path(str(value)))
    if column.name == "ckpt_size" and isinstance(value, int):
        return human_size(value)
    if column.name == "created_at":
        return escape_control(str(value)[:16].replace("T", " "))
    if column.name == "aliases" and isinstance(value, list):
        return escape_control(", ".join(display_path(str(v)) for v in value)) or "-"
    return _cell(value)


def _param_cell(value: Any) -> str:
    """A parameter as a config spells it: a float in full (``1e-05``, not rounded to four
    places as a metric is), booleans lower case, lists and mappings as JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return escape_control(json.dumps(value, ensure_ascii=False))
    if isinstance(value, float):
        return repr(value)
    return escape_control(str(value))


def render_table(
    records: Sequence[dict[str, Any]],
    *,
    columns: Sequence[Column] | None = None,
    first: Sequence[Column] = (),
    added: Sequence[Column] = (),
    screen: Screen | None = None,
) -> str:
    """The table of ``columns`` (default: the fields one picks a checkpoint by, after ``first``,
    the columns the query ranks, sorts or filters by), then ``added`` (``--varying``), fitted to
    ``screen``."""
    screen = screen or Screen()
    if columns is None:
        # A parameter the query groups, sorts or filters by is shown once, among ``first``.
        shown_columns, keep = default_columns([*first, *(c for c in added if c not in first)])
    else:
        shown_columns, keep = list(columns), {c.name for c in columns}
    count = rows_that_fit(len(records), screen.height)
    cells = [[_table_cell(c, c.value(r)) for c in shown_columns] for r in records[:count]]
    return table.render(shown_columns, cells, keep, screen, hidden_rows=len(records) - count)


def render_records(
    records: Sequence[dict[str, Any]],
    fmt: str,
    *,
    columns: Sequence[Column] | None = None,
    added: Sequence[Column] = (),
    **table_options: Any,
) -> str:
    """``records`` in ``fmt``; ``columns`` picks the fields, metrics and parameters shown (every
    format but paths), ``added`` (``--varying``'s parameters) come after them. No records is
    ``[]`` in JSON and the header line in CSV."""
    if fmt == "table":
        if columns is not None:
            columns = [*columns, *(c for c in added if c not in columns)]
            added = ()
        return render_table(records, columns=columns, added=added, **table_options)
    if fmt == "paths":
        return render_paths(records)
    if fmt == "csv":
        picked = csv_columns(records, columns)
        return render_csv(records, [*picked, *(c for c in added if c not in picked)])
    if columns is not None:
        columns = [*columns, *(c for c in added if c not in columns)]
    rows = [select(r, columns) for r in records] if columns is not None else list(records)
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if fmt == "jsonl":
        return "\n".join(json.dumps(r, separators=(",", ":")) for r in rows)
    raise ValueError(f"unknown format {fmt!r}")


def render_csv(records: Sequence[dict[str, Any]], columns: Sequence[Column] | None = None) -> str:
    """One column per field, then one per metric name (those that are not also fields); or the
    ``columns`` asked for. A header line even when there are no records."""
    picked = csv_columns(records, columns)
    rows: list[list[Any]] = [[c.key for c in picked]]
    rows += [[_csv_value(c.value(r)) for c in picked] for r in records]
    return _csv_lines(rows).rstrip("\n")


def _csv_value(value: Any) -> Any:
    """A cell: empty for None, JSON for a list or mapping (``aliases``), else the value."""
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return value


def _csv_lines(rows: Iterable[Sequence[Any]]) -> str:
    """CSV rows ended by "\n", with any field holding "\r" or "\n" quoted.

    The csv module quotes only the characters of its line terminator: with "\n" a bare "\r"
    in a name would go out unquoted and break every reader. So rows are written with "\r\n"
    (both quoted) and the terminator is then shortened.
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    lines = []
    for row in rows:
        writer.writerow(row)
        lines.append(out.getvalue()[:-2] + "\n")
        out.seek(0)
        out.truncate()
    return "".join(lines)


def render_paths(records: Sequence[dict[str, Any]], *, null: bool = False) -> str:
    """One path per line, or each path ended by a NUL (``null``, like ``find -print0``).

    A path holding a newline would read as two paths: it is refused rather than escaped, since
    an escaped path names no file.
    """
    paths = [r["checkpoint_path"] for r in records]
    if null:
        return "".join(path + "\0" for path in paths)
    for path in paths:
        if "\n" in path or "\r" in path:
            raise PathsFormatError(
                f"the path '{escape_control(path)}' contains a line break, so one path per line "
                "would split it: use --format paths -0 (NUL-separated, for xargs -0) or "
                "--format json"
            )
    return "\n".join(paths)


def render_rows(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str) -> str:
    """Plain result sets (``ckpt-index sql``) held whole."""
    return "".join(stream_rows(columns, [rows], fmt))


def stream_rows(
    columns: Sequence[str], batches: Iterable[Sequence[Sequence[Any]]], fmt: str
) -> Iterator[str]:
    """Render rows batch by batch, so that memory does not grow with the result.

    The pieces joined are the whole text, without a final newline. The table's column widths
    come from the rows seen so far: a later, wider value widens the columns from there on.
    """
    if fmt == "json":
        yield from _stream_json(columns, batches)
    elif fmt == "jsonl":
        first = True
        for batch in batches:
            text = "\n".join(
                json.dumps(dict(zip(columns, r, strict=True)), default=str) for r in batch
            )
            if text:
                yield text if first else "\n" + text
                first = False
    elif fmt == "csv":
        pending = _csv_lines([columns])
        for batch in batches:
            text = _csv_lines([_csv_value(v) for v in r] for r in batch)
            yield pending
            pending = text
        yield pending.rstrip("\n")
    elif fmt == "table":
        yield from _stream_table(columns, batches)
    else:
        raise ValueError(f"unknown format {fmt!r}")


def _stream_json(
    columns: Sequence[str], batches: Iterable[Sequence[Sequence[Any]]]
) -> Iterator[str]:
    # The same text as json.dumps(list_of_rows, indent=2), one row at a time.
    first = True
    for batch in batches:
        pieces = []
        for row in batch:
            item = json.dumps(dict(zip(columns, row, strict=True)), indent=2, default=str)
            pieces.append(
                ("[\n" if first else ",\n") + "\n".join("  " + line for line in item.splitlines())
            )
            first = False
        yield "".join(pieces)
    yield "[]" if first else "\n]"


def _stream_table(
    columns: Sequence[str], batches: Iterable[Sequence[Sequence[Any]]]
) -> Iterator[str]:
    headers = [escape_control(str(c)) for c in columns]
    widths = [len(h) for h in headers]
    header_done = False
    for batch in batches:
        cells = [[_cell(v) for v in row] for row in batch]
        for row in cells:
            widths = [max(w, len(v)) for w, v in zip(widths, row, strict=True)]
        lines = [] if header_done else [_table_line(headers, widths)]
        lines += [_table_line(r, widths) for r in cells]
        if lines:
            yield ("\n" if header_done else "") + "\n".join(lines)
            header_done = True
    if not header_done:
        yield "  ".join(headers).rstrip()


def _table_line(cells: Sequence[str], widths: Sequence[int]) -> str:
    """One line of a table: each cell padded to its column's width (every row has every column)."""
    return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()
