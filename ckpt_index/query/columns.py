"""The columns of a query result: what ``--columns`` may name, and a record cut down to them.

A column is a field of the result (``checkpoint_path``, ``hmean``, ``ckpt_size``, ... as in the
JSON output, or a short alias such as ``path``, ``step`` or ``size``), a logged metric
(``metrics.val/loss``, or its bare name when no field has it) or a hyperparameter
(``params.model.lr``). Every format picks the same columns; data formats (JSON, CSV) name
them by their field, metric and ``params.`` names, the table by its short headers (a parameter
by its dotted name).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ckpt_index.hyperparams import PREFIX
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
    """A ``--columns`` name that is neither a field nor a metric nor a parameter of the index
    (a usage error)."""


@dataclass(frozen=True)
class Column:
    """One column: a field of the record, a name in its ``metrics`` (``metric``) or in its
    ``params`` (``param``: ``name`` without the ``params.`` prefix)."""

    name: str
    metric: bool = False
    param: bool = False

    @property
    def header(self) -> str:
        if self.metric or self.param:
            return self.name
        return HEADERS.get(self.name, self.name)

    @property
    def key(self) -> str:
        """The name data formats give the column (a CSV header)."""
        return PREFIX + self.name if self.param else self.name

    def value(self, record: dict[str, Any]) -> Any:
        if self.metric:
            return record["metrics"].get(self.name)
        if self.param:
            return record.get("params", {}).get(self.name)
        return record.get(self.name)


#: Resolves a bare name to ``params.FULL`` (the unique parameter it is a suffix of), the name
#: itself for a metric of the index, or None for an unknown name.
Resolver = Callable[[str], "str | None"]


def column(name: str, metric_names: Iterable[str] = (), resolve: Resolver | None = None) -> Column:
    """The column ``name`` means: a field or its alias, ``metrics.NAME``, ``params.NAME``, a bare
    metric name found in ``metric_names`` or a bare name ``resolve`` finds (the unique parameter
    it is a dotted suffix of: ``lr``); anything else is a :class:`ColumnError`."""
    if name.startswith("metrics.") and len(name) > len("metrics."):
        return Column(name[len("metrics.") :], metric=True)
    if name.startswith(PREFIX) and len(name) > len(PREFIX):
        return Column(name[len(PREFIX) :], param=True)
    field = ALIASES.get(name, name)
    if field in FIELD_NAMES:
        return Column(field)
    known = set(metric_names)
    if name in known:
        return Column(name, metric=True)
    full = resolve(name) if resolve is not None else None
    if full is not None:
        if full.startswith(PREFIX):
            return Column(full[len(PREFIX) :], param=True)
        return Column(full, metric=True)
    import difflib  # only for the error's suggestion

    candidates = [*FIELD_NAMES, *ALIASES, *sorted(known)]
    close = difflib.get_close_matches(name, candidates, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ColumnError(f"unknown column {name!r}{hint}")


def parse_columns(
    text: str, metric_names: Iterable[str] = (), resolve: Resolver | None = None
) -> list[Column]:
    """``--columns a,b,metrics.x``: the columns in the order given (an empty name is an error)."""
    names = [part.strip() for part in text.split(",")]
    if not all(names):
        raise ColumnError(f"--columns takes names separated by commas, not {text!r}")
    known = list(metric_names)
    return [column(name, known, resolve) for name in names]


def select(record: dict[str, Any], columns: Sequence[Column]) -> dict[str, Any]:
    """The record with only ``columns``: fields at the top, metrics under ``metrics``,
    parameters under ``params``."""
    out: dict[str, Any] = {c.name: record.get(c.name) for c in columns if not (c.metric or c.param)}
    metrics = [c.name for c in columns if c.metric]
    if metrics:
        out["metrics"] = {name: record["metrics"].get(name) for name in metrics}
    params = [c for c in columns if c.param]
    if params:
        out["params"] = {c.name: c.value(record) for c in params}
    return out


def csv_columns(
    records: Sequence[dict[str, Any]], columns: Sequence[Column] | None
) -> list[Column]:
    """The CSV columns: those asked for, else every field then every metric no field has."""
    if columns is not None:
        return list(columns)
    names = sorted({n for r in records for n in r["metrics"] if n not in FIELD_NAMES})
    return [Column(f) for f in FIELD_NAMES] + [Column(n, metric=True) for n in names]


def spec_columns(
    spec: QuerySpec, metric_names: Iterable[str] = (), resolve: Resolver | None = None
) -> list[Column]:
    """The columns a query ranks by (``best_by``), groups by, sorts by and filters on, in that
    order: the table shows them whatever the width. Names that are no column are left out (the query
    reports them)."""
    from ckpt_index.query.spec import parse_direction
    from ckpt_index.query.where import WhereError, names_in, parse_where

    names = [parse_direction(spec.best_by)[0]] if spec.best_by else []
    if spec.group_by and spec.group_by.startswith(PREFIX):  # a field is a default column
        names.append(spec.group_by)
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
            col = column(name, known, resolve)
        except ColumnError:
            col = Column(name, metric=True)
        if col not in found:
            found.append(col)
    return found


@dataclass
class Picked:
    """What a query shows: ``columns`` (``None``: each format's default), ``first`` (the table's
    columns ranked, sorted or filtered by), whether ``--limit`` bounds the rows and ``added``
    (the ``--varying`` parameters, after the default or chosen columns)."""

    columns: list[Column] | None
    first: list[Column]
    limited: bool
    added: list[Column] = field(default_factory=list)


def resolver(conn: Any) -> Resolver:
    """:data:`Resolver` on the index of ``conn`` (answers cached); an ambiguous bare name is a
    :class:`ColumnError` listing the parameters it could mean."""
    from ckpt_index.query.names import AmbiguousNameError, KnownNames, UnknownNameError

    known = KnownNames(conn)

    def resolve(name: str) -> str | None:
        try:
            return known.canonical(name)
        except AmbiguousNameError as exc:
            raise ColumnError(str(exc)) from None
        except UnknownNameError:
            return None

    return resolve


def planned_params(conn: Any, text: str | None, spec: QuerySpec) -> list[str]:
    """The parameters ``--columns`` (``text``) and the table's ranked, grouped, sorted and
    filtered columns name, known before the query runs (what its records must carry). Names
    that are no column are left for :func:`read_columns` to report."""
    resolve = resolver(conn)
    wanted: list[str] = []
    names = [part.strip() for part in text.split(",")] if text else []
    for name in names:
        try:
            col = column(name, (), resolve)
        except ColumnError:
            continue
        if col.param and col.name not in wanted:
            wanted.append(col.name)
    for col in spec_columns(spec, (), resolve):
        if col.param and col.name not in wanted:
            wanted.append(col.name)
    return wanted


def read_columns(
    conn: Any,
    records: Sequence[dict[str, Any]],
    text: str | None,
    spec: QuerySpec,
    varying: Sequence[str] = (),
) -> Picked:
    """The columns of ``--columns`` (``text``) and of ``spec``, metric names checked against
    the results and, when one is not there, against the index's; parameter names against the
    index. ``varying``: the parameters ``--varying`` adds."""
    names = {n for r in records for n in r["metrics"]}
    resolve = resolver(conn)

    def known() -> set[str]:
        return names | index_metric_names(conn)

    columns = None
    if text is not None:
        try:
            columns = parse_columns(text, names, resolve)
        except ColumnError:
            columns = parse_columns(text, known(), resolve)
        check_params(conn, records, columns)
    chosen = columns or []
    added = [Column(n, param=True) for n in varying if Column(n, param=True) not in chosen]
    return Picked(columns, spec_columns(spec, names, resolve), spec.limit is not None, added)


def check_params(conn: Any, records: Sequence[dict[str, Any]], columns: Sequence[Column]) -> None:
    """Refuse a parameter column no parameter set of the index holds (with a suggestion)."""
    from ckpt_index.query.names import KnownNames

    present = {n for r in records for n in r.get("params", {})}
    known = KnownNames(conn)
    for col in columns:
        if col.param and col.name not in present and col.key not in known:
            close = known.unknown(col.key).suggestions[:1]
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ColumnError(f"unknown column {col.key!r}{hint}")


def index_metric_names(conn: Any) -> set[str]:
    """Every metric name the index holds."""
    from sqlalchemy import select as sql_select

    from ckpt_index.index.tables import checkpoint_metrics

    return set(conn.execute(sql_select(checkpoint_metrics.c.name).distinct()).scalars())
