"""Checkpoints side by side: ``ckpt-index diff A B [C ...]``.

The checkpoints are named by path (as ``show`` takes them; a symbolic or hard link that is an
alias of an indexed checkpoint names that checkpoint) and/or selected by a query
(:class:`~ckpt_index.query.spec.QuerySpec`: ``--best-by hmean --group-by exp_name`` compares the
best of each experiment). Each compared row is one field of the JSON record, one metric
(``metrics.NAME``) or one hyperparameter (``params.NAME``); by default only those whose values
differ. A metric or parameter one checkpoint lacks differs from one it has, even a null one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select

from ckpt_index.index.records import OUTPUT_FIELDS
from ckpt_index.index.tables import checkpoints
from ckpt_index.query.spec import QueryError, QuerySpec, find_checkpoint, run_query

#: The formats ``diff`` prints.
DIFF_FORMATS = ("table", "json", "markdown")

#: The fields compared: every field of a JSON row but the path, which names the column.
DIFF_FIELDS = tuple(name for name in OUTPUT_FIELDS if name != "checkpoint_path")


class _Missing:
    """A metric or parameter a checkpoint does not have (not the same as a null value)."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class NotIndexedError(LookupError):
    """Paths given to ``diff`` that the index has no checkpoint for."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = list(paths)
        super().__init__(
            "not in the index (run ckpt-index sync): " + ", ".join(repr(p) for p in paths)
        )


@dataclass
class DiffRow:
    """One compared name (``epoch``, ``metrics.val/loss``, ``params.model.lr``) and its value
    in each checkpoint (:data:`MISSING` where the checkpoint lacks it)."""

    name: str
    values: list[Any]

    @property
    def differs(self) -> bool:
        first = _key(self.values[0])
        return any(_key(v) != first for v in self.values[1:])


@dataclass
class Diff:
    """The checkpoints compared (their records) and the rows shown."""

    records: list[dict[str, Any]]
    rows: list[DiffRow]

    @property
    def paths(self) -> list[str]:
        return [r["checkpoint_path"] for r in self.records]

    def as_json(self) -> dict[str, Any]:
        """``{"checkpoints": [path, ...], "rows": [{"name", "values"}]}``; a value a checkpoint
        lacks is null there, and ``missing`` lists the indexes of those checkpoints."""
        rows = []
        for row in self.rows:
            item: dict[str, Any] = {
                "name": row.name,
                "values": [None if v is MISSING else v for v in row.values],
            }
            missing = [i for i, v in enumerate(row.values) if v is MISSING]
            if missing:
                item["missing"] = missing
            rows.append(item)
        return {"checkpoints": self.paths, "rows": rows}


def _key(value: Any) -> Any:
    """A value as compared: JSON text, so 1 and 1.0 differ as they do in a config, and MISSING
    differs from null."""
    if value is MISSING:
        return MISSING
    return json.dumps(value, sort_keys=True)


def compare(records: Sequence[dict[str, Any]], *, every: bool = False) -> Diff:
    """The rows of ``records`` side by side: fields in record order, then metrics and parameters
    by name; only the rows that differ unless ``every``."""
    rows = [DiffRow(name, [r.get(name) for r in records]) for name in DIFF_FIELDS]
    for key, prefix in (("metrics", "metrics."), ("params", "params.")):
        names = sorted({n for r in records for n in r.get(key) or {}})
        rows += [
            DiffRow(prefix + n, [(r.get(key) or {}).get(n, MISSING) for r in records])
            for n in names
        ]
    return Diff(list(records), rows if every else [row for row in rows if row.differs])


def find_record(conn: Connection, path: str) -> dict[str, Any] | None:
    """The record of the checkpoint at ``path`` (as ``show`` spells paths: folder resolved), with
    its params; a link (symbolic or hard) that is an alias of an indexed checkpoint gives that
    checkpoint."""
    folder, name = os.path.split(os.path.abspath(path))
    spelled = os.path.join(os.path.realpath(folder), name)
    for candidate in dict.fromkeys([spelled, os.path.realpath(path)]):
        record = find_checkpoint(conn, candidate)
        if record is not None:
            return record
    # A hard link, or a symbolic link whose target moved: listed in some row's aliases.
    c = checkpoints.c
    for candidate in dict.fromkeys([spelled, os.path.abspath(path)]):
        needle = json.dumps(candidate)
        stmt = select(c.checkpoint_path, c.aliases).where(c.aliases.contains(needle))
        for target, aliases in conn.execute(stmt):
            if candidate in json.loads(aliases):
                return find_checkpoint(conn, target)
    return None


def select_checkpoints(
    conn: Connection, paths: Sequence[str], spec: QuerySpec | None = None
) -> list[dict[str, Any]]:
    """The records ``paths`` name, then those ``spec`` selects, each once, in that order, with
    their params. Raises :class:`NotIndexedError` for paths the index has no checkpoint for."""
    records: list[dict[str, Any]] = []
    missing = []
    for path in paths:
        record = find_record(conn, path)
        if record is None:
            missing.append(path)
        else:
            records.append(_json_fields(record))
    if missing:
        raise NotIndexedError(missing)
    if spec is not None:
        records += run_query(conn, spec, params=True)
    unique: dict[tuple[Any, str], dict[str, Any]] = {}
    for record in records:
        unique.setdefault((record["location"], record["checkpoint_path"]), record)
    return list(unique.values())


def _json_fields(record: dict[str, Any]) -> dict[str, Any]:
    """``show``'s record cut to a query's JSON row (fields, metrics, params)."""
    return {k: record[k] for k in (*OUTPUT_FIELDS, "metrics", "params")}


def diff_checkpoints(
    conn: Connection,
    paths: Sequence[str] = (),
    spec: QuerySpec | None = None,
    *,
    every: bool = False,
) -> Diff:
    """Compare the checkpoints ``paths`` name and ``spec`` selects (see :func:`compare`).

    Raises :class:`NotIndexedError` for a path not in the index, :class:`QueryError` when fewer
    than two checkpoints are named or selected (and the query's own errors for ``spec``).
    """
    records = select_checkpoints(conn, paths, spec)
    if len(records) < 2:
        found = "none" if not records else "only one"
        raise QueryError(f"diff compares at least two checkpoints; {found} given or selected")
    return compare(records, every=every)


def render_diff(diff: Diff, fmt: str) -> str:
    """``diff`` as a table (one column per checkpoint), JSON or Markdown."""
    if fmt == "json":
        return json.dumps(diff.as_json(), indent=2)
    from ckpt_index.query.table import display_path

    headers = ["", *(display_path(p) for p in diff.paths)]
    cells = [[row.name, *(_cell(row.name, v) for v in row.values)] for row in diff.rows]
    if fmt == "markdown":
        return "\n".join(_markdown_line(line) for line in [headers, ["---"] * len(headers), *cells])
    if fmt == "table":
        from ckpt_index.query.render import escape_control

        lines = [[escape_control(c) for c in line] for line in [headers, *cells]]
        widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
        padded = ["  ".join(map(str.ljust, line, widths)) for line in lines]
        return "\n".join(line.rstrip() for line in padded)
    raise ValueError(f"unknown format {fmt!r}")


def _cell(name: str, value: Any) -> str:
    """A value as the table shows it: ``-`` when missing (and for a field or metric that is
    null), ``null`` for a parameter set to null, paths relative to the current directory,
    numbers in full, booleans lower case, lists and mappings as JSON."""
    if value is MISSING or (value is None and not name.startswith("params.")):
        return "-"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float):
        return repr(value)
    if name.endswith("_path"):
        from ckpt_index.query.table import display_path

        return display_path(str(value))
    return str(value)


def _markdown_line(cells: Sequence[str]) -> str:
    from ckpt_index.query.render import escape_control

    safe = [escape_control(c).replace("\\", "\\\\").replace("|", "\\|") for c in cells]
    return "| " + " | ".join(safe) + " |"


__all__ = [
    "DIFF_FORMATS",
    "MISSING",
    "Diff",
    "DiffRow",
    "NotIndexedError",
    "compare",
    "diff_checkpoints",
    "find_record",
    "render_diff",
    "select_checkpoints",
]
