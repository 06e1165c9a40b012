"""The columns of a query result: what ``--columns`` may name, and a record cut down to them.

A column is a field of the result (``checkpoint_path``, ``hmean``, ``ckpt_size``, ... as in the
JSON output, or a short alias such as ``path``, ``step`` or ``size``), a logged metric
(``metrics.val/loss``, or its bare name when no field has it) or, once hyperparameters are
indexed, ``params.NAME``. Every format picks the same columns; data formats (JSON, CSV) name
them by their field and metric names, the table by its short headers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ckpt_index.index.records import OUTPUT_FIELDS

if TYPE_CHECKING:
    from ckpt_index.query.spec import QuerySpec

#: Short names the table shows and ``--columns`` accepts, for the fields that have one.
ALIASES = {
    "path": "checkpoint_path",
    "step": "global_step",
    "arch": "architecture",
    "phase": "training_phase",
    "size": "ckpt_size",
    "created": "created_at",
    "exp": "exp_name",
}
HEADERS = {field: alias for alias, field in ALIASES.items() if alias != "exp"}
FIELD_NAMES = tuple(name for name in OUTPUT_FIELDS if name != "metrics")


class ColumnError(ValueError):
    """A ``--columns`` name that is neither a field nor a metric of the index (a usage error)."""


@dataclass(frozen=True)
class Column:
    """One column: a field of the record, or (``metric``) a name in its ``metrics``."""

    name: str
    metric: bool = False

    @property
    def header(self) -> str:
        return self.name if self.metric else HEADERS.get(self.name, self.name)

    def value(self, record: dict[str, Any]) -> Any:
        return record["metrics"].get(self.name) if self.metric else record.get(self.name)


def column(name: str, metric_names: Iterable[str] = ()) -> Column:
    """The column ``name`` means: a field or its alias, ``metrics.NAME``, or a bare metric name
    found in ``metric_names``; anything else is a :class:`ColumnError`."""
    if name.startswith("metrics.") and len(name) > len("metrics."):
        return Column(name[len("metrics.") :], metric=True)
    field = ALIASES.get(name, name)
    if field in FIELD_NAMES:
        return Column(field)
    known = set(metric_names)
    if name in known:
        return Column(name, metric=True)
    if name.startswith("params."):
        raise ColumnError(f"unknown column {name!r} (hyperparameters are not indexed yet)")
    import difflib  # only for the error's suggestion

    candidates = [*FIELD_NAMES, *ALIASES, *sorted(known)]
    close = difflib.get_close_matches(name, candidates, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ColumnError(f"unknown column {name!r}{hint}")


def parse_columns(text: str, metric_names: Iterable[str] = ()) -> list[Column]:
    """``--columns a,b,metrics.x``: the columns in the order given (an empty name is an error)."""
    names = [part.strip() for part in text.split(",")]
    if not all(names):
        raise ColumnError(f"--columns takes names separated by commas, not {text!r}")
    known = list(metric_names)
    return [column(name, known) for name in names]


def select(record: dict[str, Any], columns: Sequence[Column]) -> dict[str, Any]:
    """The record with only ``columns``: fields at the top, metrics under ``metrics``."""
    out: dict[str, Any] = {c.name: record.get(c.name) for c in columns if not c.metric}
    metrics = [c.name for c in columns if c.metric]
    if metrics:
        out["metrics"] = {name: record["metrics"].get(name) for name in metrics}
    return out


def csv_columns(
    records: Sequence[dict[str, Any]], columns: Sequence[Column] | None
) -> list[Column]:
    """The CSV columns: those asked for, else every field then every metric no field has."""
    if columns is not None:
        return list(columns)
    names = sorted({n for r in records for n in r["metrics"] if n not in FIELD_NAMES})
    return [Column(f) for f in FIELD_NAMES] + [Column(n, metric=True) for n in names]


def spec_columns(spec: QuerySpec, metric_names: Iterable[str] = ()) -> list[Column]:
    """The columns a query ranks by (``best_by``), sorts by and filters on, in that order: the
    table shows them whatever the width. Names that are no column are left out (the query
    reports them)."""
    from ckpt_index.query.spec import parse_direction
    from ckpt_index.query.where import WhereError, names_in, parse_where

    names = [parse_direction(spec.best_by)[0]] if spec.best_by else []
    names += [parse_direction(item, default="asc")[0] for item in spec.sort]
    if spec.where:
        try:
            names += sorted(names_in(parse_where(spec.where)))
        except WhereError:
            pass
    flags = {
        "exp_name": spec.exp,
        "encoder": spec.encoder,
        "architecture": spec.architecture,
        "training_phase": spec.phase,
        "epoch": spec.min_epoch if spec.min_epoch is not None else spec.max_epoch,
    }
    names += [name for name, value in flags.items() if value is not None]
    known = list(metric_names)
    found: list[Column] = []
    for name in names:
        try:
            col = column(name, known)
        except ColumnError:
            col = Column(name, metric=True)
        if col not in found:
            found.append(col)
    return found


@dataclass
class Picked:
    """What a query shows: ``columns`` (``None``: each format's default), ``first`` (the table's
    columns ranked, sorted or filtered by) and whether ``--limit`` bounds the rows."""

    columns: list[Column] | None
    first: list[Column]
    limited: bool


def read_columns(
    conn: Any, records: Sequence[dict[str, Any]], text: str | None, spec: QuerySpec
) -> Picked:
    """The columns of ``--columns`` (``text``) and of ``spec``, metric names checked against
    the results and, when one is not there, against the index's."""
    names = {n for r in records for n in r["metrics"]}

    def known() -> set[str]:
        return names | index_metric_names(conn)

    columns = None
    if text is not None:
        try:
            columns = parse_columns(text, names)
        except ColumnError:
            columns = parse_columns(text, known())
    return Picked(columns, spec_columns(spec, names), spec.limit is not None)


def index_metric_names(conn: Any) -> set[str]:
    """Every metric name the index holds."""
    from sqlalchemy import select as sql_select

    from ckpt_index.index.tables import checkpoint_metrics

    return set(conn.execute(sql_select(checkpoint_metrics.c.name).distinct()).scalars())
