"""Rendering query results: table, json, jsonl, csv and paths."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from typing import Any

FORMATS = ("table", "json", "jsonl", "csv", "paths")


def _display_path(path: str) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def render_table(
    records: Sequence[dict[str, Any]], *, metric: str | None = None, max_rows: int | None = None
) -> str:
    """A fixed-width table of the fields one picks a checkpoint by."""
    columns = ["hmean", "epoch", "global_step", "exp_name", "architecture", "encoder",
               "training_phase", "checkpoint_path"]
    headers = ["hmean", "epoch", "step", "exp_name", "arch", "encoder", "phase", "path"]
    if metric and metric != "hmean":
        columns.insert(0, metric)
        headers.insert(0, metric)
    shown = records if max_rows is None else records[:max_rows]
    rows = []
    for record in shown:
        row = []
        for col in columns:
            value = record.get(col) if col in record else record["metrics"].get(col)
            row.append(_display_path(value) if col == "checkpoint_path" else _cell(value))
        rows.append(row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    if len(shown) < len(records):
        more = len(records) - len(shown)
        lines.append(f"... {more} more (use --limit N, or --format jsonl/csv for all)")
    return "\n".join(lines)


def render_records(records: Sequence[dict[str, Any]], fmt: str, **table_options: Any) -> str:
    if fmt == "table":
        return render_table(records, **table_options)
    if fmt == "json":
        return json.dumps(list(records), indent=2)
    if fmt == "jsonl":
        return "\n".join(json.dumps(r, separators=(",", ":")) for r in records)
    if fmt == "paths":
        return "\n".join(r["checkpoint_path"] for r in records)
    if fmt == "csv":
        return render_csv(records)
    raise ValueError(f"unknown format {fmt!r}")


def render_csv(records: Sequence[dict[str, Any]]) -> str:
    """One column per field, then one per metric name (those that are not also fields)."""
    fields = [k for k in records[0] if k != "metrics"] if records else []
    metric_names = sorted({n for r in records for n in r["metrics"] if n not in fields})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(fields + metric_names)
    for r in records:
        writer.writerow(
            [_csv_value(r[f]) for f in fields] + [_csv_value(r["metrics"].get(n)) for n in metric_names]
        )
    return out.getvalue().rstrip("\n")


def _csv_value(value: Any) -> Any:
    return "" if value is None else value


def render_rows(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str) -> str:
    """Plain result sets (``ckpt-index sql``)."""
    if fmt == "json":
        return json.dumps([dict(zip(columns, row)) for row in rows], indent=2, default=str)
    if fmt == "jsonl":
        return "\n".join(json.dumps(dict(zip(columns, r)), default=str) for r in rows)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([[_csv_value(v) for v in row] for row in rows])
        return out.getvalue().rstrip("\n")
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c)
              for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)
