"""The query table for a person at a terminal: one screen line per row, the header first and a
last line saying how many rows were left out.

Given a width, the columns that do not fit are dropped, least useful first (those the query
ranks, sorts or filters by, and the path, are never dropped), and long text (the path, the
experiment name) is elided in the middle, a path keeping its file name. Given a height, the
rows are cut so that the header, the rows and the "more" line all fit on the screen. Without
either (output to a pipe) the table is plain: every row, every value whole.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ckpt_index.query.columns import Column

#: The table's columns when ``--columns`` is not given, in the order shown.
DEFAULT_COLUMNS = (
    "hmean",
    "epoch",
    "global_step",
    "exp_name",
    "architecture",
    "encoder",
    "training_phase",
    "ckpt_size",
    "created_at",
    "checkpoint_path",
)
#: Which default columns go first when the width is short.
DROP_ORDER = (
    "created_at",
    "ckpt_size",
    "training_phase",
    "architecture",
    "global_step",
    "encoder",
    "exp_name",
    "epoch",
    "hmean",
)
#: Text columns that may be elided, and the width they keep at least.
_ELASTIC = {"checkpoint_path": 16, "exp_name": 16, "sidecar_path": 16, "error": 12}
_GAP = 2


@dataclass
class Screen:
    """The terminal's size; ``None`` for a dimension that does not bound the table."""

    width: int | None = None
    height: int | None = None
    ellipsis: str = "\u2026"


def default_columns(shown_first: Sequence[Column]) -> tuple[list[Column], set[str]]:
    """The default columns with ``shown_first`` (the names the query ranks, sorts or filters by)
    in front, and the names never dropped."""
    first = [c for c in shown_first if c.name != "checkpoint_path"]
    seen = {c.name for c in first}
    rest = [Column(name) for name in DEFAULT_COLUMNS if name not in seen]
    return first + rest, seen | {"checkpoint_path"}


def display_path(path: str) -> str:
    """A path below the current directory relative to it, any other path as it is."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


def human_size(size: int) -> str:
    """``1536`` -> ``1.5K``: one decimal below 10, powers of 1024 (as ``ls -lh``)."""
    value = float(size)
    for unit in ("B", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            break
        value /= 1024
    if unit == "B":
        return f"{size}B"
    return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"


def elide(text: str, width: int, ellipsis: str, *, path: bool = False) -> str:
    """``text`` cut to ``width`` characters in the middle; a path keeps its file name when it
    fits (``outputs/exp…/checkpoints/epoch-03.ckpt``)."""
    if len(text) <= width:
        return text
    if width <= len(ellipsis):
        return text[:width]
    room = width - len(ellipsis)
    right = (room + 1) // 2
    if path:
        name = len(os.path.basename(text)) + 1
        right = name if name <= room - 4 else room - min(4, room)
    return text[: room - right] + ellipsis + (text[-right:] if right else "")


def layout(
    columns: Sequence[Column],
    rows: Sequence[Sequence[str]],
    keep: set[str],
    width: int | None,
) -> list[tuple[int, int]]:
    """``(index into columns, width)`` of each column shown at ``width`` characters."""
    headers = [c.header for c in columns]
    natural = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    if width is None:
        return list(enumerate(natural))
    least = [_least(c, natural[i], [r[i] for r in rows]) for i, c in enumerate(columns)]
    shown = _fitting(columns, least, keep, width)
    return [(i, w) for i, w in _widen(shown, least, natural, width).items()]


def _fitting(columns: Sequence[Column], least: list[int], keep: set[str], width: int) -> list[int]:
    """The columns kept: the default ones dropped in :data:`DROP_ORDER` until the rest fit at
    their least widths (or only columns never dropped are left)."""
    shown = list(range(len(columns)))
    droppable = [i for name in DROP_ORDER for i in shown if columns[i].name == name]
    droppable = [i for i in droppable if columns[i].name not in keep]
    while droppable and _total([least[i] for i in shown]) > width:
        shown.remove(droppable.pop(0))
    return shown


def _widen(shown: list[int], least: list[int], natural: list[int], width: int) -> dict[int, int]:
    """Each shown column's width: its least, plus a share of the room left in proportion to
    what it lacks of its natural width."""
    widths = {i: least[i] for i in shown}
    spare = width - _total(widths.values())
    lack = {i: natural[i] - least[i] for i in shown if natural[i] > least[i]}
    need = sum(lack.values())
    for i, missing in lack.items():
        widths[i] += max(0, min(missing, spare * missing // need))
    return widths


def _least(column: Column, natural: int, cells: Sequence[str]) -> int:
    """The width a column keeps at least: its natural width, or for long text a minimum (for a
    path, room for the file name and a few characters of its folder)."""
    if column.metric or column.name not in _ELASTIC:
        return natural
    least = max(len(column.header), _ELASTIC[column.name])
    if column.name.endswith("_path"):
        least = max([least, *(len(os.path.basename(c)) + 6 for c in cells)])
    return min(natural, least)


def _total(widths: Any) -> int:
    widths = list(widths)
    return sum(widths) + _GAP * max(0, len(widths) - 1)


def render(
    columns: Sequence[Column],
    cells: Sequence[Sequence[str]],
    keep: set[str],
    screen: Screen,
    hidden_rows: int = 0,
) -> str:
    """The table's lines: header, one line per row of ``cells``, and the "more" line when
    ``hidden_rows`` were left out; no line is wider than ``screen.width``."""
    shown = layout(columns, cells, keep, screen.width)
    lines = [_line([columns[i].header for i, _ in shown], shown, columns, screen)]
    lines += [_line([row[i] for i, _ in shown], shown, columns, screen) for row in cells]
    if hidden_rows:
        lines.append(f"{screen.ellipsis} {hidden_rows} more (use --limit/--format)")
    if screen.width is not None:  # columns never dropped that still do not fit: cut the end
        cut = screen.width - len(screen.ellipsis)
        lines = [
            line if len(line) <= screen.width else line[:cut] + screen.ellipsis for line in lines
        ]
    return "\n".join(lines)


def _line(
    values: Sequence[str],
    shown: Sequence[tuple[int, int]],
    columns: Sequence[Column],
    screen: Screen,
) -> str:
    parts = []
    for value, (i, width) in zip(values, shown, strict=True):
        path = columns[i].name.endswith("_path")
        parts.append(elide(value, width, screen.ellipsis, path=path).ljust(width))
    return (" " * _GAP).join(parts).rstrip()


def rows_that_fit(total: int, height: int | None) -> int:
    """How many of ``total`` rows a screen of ``height`` lines shows with the header, the "more"
    line and the shell's prompt after them (at least one)."""
    if height is None or total + 2 <= height:
        return total
    return max(1, height - 3)
