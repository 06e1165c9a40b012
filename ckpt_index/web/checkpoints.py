"""The Checkpoints page and ``/api/checkpoints``: URL state -> QuerySpec -> one page of records.

The state of the page is its query string, with the names of ``ckpt-index query``'s options
(``best_by``, ``group_by``, ``encoder``, ``architecture``, ``exp``, ``phase``, ``min_epoch``,
``max_epoch``, ``where``, ``sort`` (repeatable), ``include_orphans``, ``include_unreadable``,
``location``, ``columns``) plus ``page`` and ``per_page``. The query is the CLI's: the same
:class:`~ckpt_index.query.spec.QuerySpec`, name checks, ``--where`` compiler (user text only as
bound parameters) and record fields; pages are LIMIT/OFFSET over its ordered statement. Facets
count the matching rows by experiment, architecture, encoder, phase, status and source.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import Connection, Select, Subquery, func, select

from ckpt_index.query.columns import Column, ColumnError, read_columns
from ckpt_index.query.names import QueryError
from ckpt_index.query.spec import (
    QuerySpec,
    WhereError,
    build_query,
    check_names,
    parse_direction,
    run_query,
)
from ckpt_index.query.table import default_columns
from ckpt_index.vocabulary import GROUPABLE, PHASES

PER_PAGE = 50
MAX_PER_PAGE = 500
#: Past this page the offset means nothing (and a bigger one overflows a 64-bit bound).
MAX_PAGE = 10**9
#: The bounds of a whole number in a query (SQLite's INTEGER, PostgreSQL's bigint).
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: The bounds of an epoch (PostgreSQL's integer column).
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
#: Facet name -> the field it counts. The values shown per facet are the most frequent ones.
FACETS = {
    "experiment": "exp_name",
    "architecture": "architecture",
    "encoder": "encoder",
    "phase": "training_phase",
    "status": "status",
    "source": "source",
}
FACET_VALUES = 30
_TEXT = ("best_by", "group_by", "encoder", "architecture", "exp", "phase", "where", "location")
_INTS = ("min_epoch", "max_epoch")
_FLAGS = ("include_orphans", "include_unreadable")
#: Every query-string name the page reads (others are ignored).
PARAMS = (*_TEXT, *_INTS, *_FLAGS, "sort", "columns", "page", "per_page")
_TRUE = ("1", "true", "yes", "on")
#: NUL (PostgreSQL refuses it in text) and lone surrogates (no driver encodes them), refused in
#: every value as ``--where`` refuses them.
_UNENCODABLE = re.compile("[\x00\ud800-\udfff]")


#: The errors a page shows above its table (a usage error of the query: HTTP 400).
class StateError(ValueError):
    """A query-string value of the wrong kind (``min_epoch=abc``, ``phase=nope``)."""


USAGE_ERRORS = (WhereError, QueryError, ColumnError, StateError)


@dataclass
class PageState:
    """What a Checkpoints URL asks for; ``params`` keeps its query string (in order) for links."""

    spec: QuerySpec
    columns: str | None = None
    page: int = 1
    per_page: int = PER_PAGE
    params: list[tuple[str, str]] = field(default_factory=list)

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.per_page

    def link(self, **changes: str | Sequence[str] | None) -> str:
        """This page's query string with ``changes`` (``None`` removes a name; a list repeats
        it); changing anything but ``page`` goes back to page 1."""
        if set(changes) - {"page"}:
            changes.setdefault("page", None)
        kept = [(k, v) for k, v in self.params if k not in changes]
        for name, value in changes.items():
            if value is None or value == "":
                continue
            values = [value] if isinstance(value, str) else list(value)
            kept += [(name, v) for v in values]
        return "?" + urlencode(kept) if kept else "?"

    def sort_link(self, name: str) -> tuple[str, str | None]:
        """(link, current direction) for a column header: the first click sorts the natural way
        (max for most, min for names with 'loss'), the next reverses it."""
        current = None
        for item in self.spec.sort[:1]:
            sorted_name, direction = parse_direction(item, default="asc")
            if sorted_name == name:
                current = "desc" if direction == "max" else "asc"
        if current is None:
            natural = parse_direction(name)[1]
            target = "desc" if natural == "max" else "asc"
        else:
            target = "asc" if current == "desc" else "desc"
        return self.link(sort=f"{name}:{target}"), current

    def facet_link(self, facet: str, value: Any) -> str:
        """The query narrowed to ``facet = value``: by its option where ``query`` has an exact one
        (encoder, architecture, phase), else by a ``where`` condition (exact, quoted)."""
        column = FACETS[facet]
        option = {"encoder": "encoder", "architecture": "architecture", "phase": "phase"}
        if facet in option and value is not None:
            return self.link(**{option[facet]: str(value)})
        condition = f"{column} is null" if value is None else f"{column} = {quote(str(value))}"
        where = self.spec.where
        return self.link(where=f"({where}) and {condition}" if where else condition)


def quote(text: str) -> str:
    """A ``--where`` string literal (a doubled quote is one quote)."""
    return "'" + text.replace("'", "''") + "'"


def parse_state(items: Iterable[tuple[str, str]]) -> PageState:
    """The state in a query string's (name, value) pairs; :class:`StateError` for a bad value."""
    params = [(k, v) for k, v in items if k in PARAMS]
    for name, value in params:
        if bad := _UNENCODABLE.search(value):
            raise StateError(f"{name}: character {bad.group()!r} is not allowed")
    values: dict[str, Any] = {}
    sort: list[str] = []
    for name, value in params:
        if name == "sort":
            if value:
                sort.append(value)
        elif value != "" or name == "where":
            values[name] = value
    fields: dict[str, Any] = {name: values[name] for name in _TEXT if name in values}
    if fields.get("where") == "":
        del fields["where"]  # an empty box is no filter (the CLI refuses an empty --where)
    for name in _INTS:
        if name in values:
            fields[name] = _int(name, values[name], INT32_MIN, INT32_MAX)
    for name in _FLAGS:
        fields[name] = values.get(name, "").lower() in _TRUE
    if fields.get("group_by") is not None and fields["group_by"] not in GROUPABLE:
        raise StateError(f"group_by takes one of {', '.join(GROUPABLE)}")
    if fields.get("phase") is not None and fields["phase"] not in PHASES:
        raise StateError(f"phase takes one of {', '.join(PHASES)}")
    page = _int("page", values.get("page", "1"), 1, MAX_PAGE)
    per_page = _int("per_page", values.get("per_page", str(PER_PAGE)), 1, INT64_MAX)
    return PageState(
        spec=QuerySpec(sort=tuple(sort), **fields),
        columns=values.get("columns"),
        page=page,
        per_page=min(per_page, MAX_PER_PAGE),
        params=params,
    )


def _int(name: str, text: str, minimum: int, maximum: int) -> int:
    digits = text.strip().lstrip("+-")
    if not digits.isdigit() or not digits.isascii() or len(digits) > 19:
        raise StateError(f"{name} takes a whole number, not {text!r}")
    value = int(text)
    if value < minimum:
        raise StateError(f"{name} must be >= {minimum}")
    if value > maximum:
        raise StateError(f"{name} must be <= {maximum}")
    return value


@dataclass
class Page:
    """One page of results: the records (``query --format json`` fields), the columns to show,
    how many rows match in all, and the facet counts."""

    records: list[dict[str, Any]]
    columns: list[Column]
    total: int
    facets: dict[str, list[tuple[Any, int]]]
    picked: list[Column] | None = None


#: What :func:`count_matching` answers: the number of matching rows, and the facet counts.
Counts = tuple[int, dict[str, list[tuple[Any, int]]]]


def read_page(
    conn: Connection,
    state: PageState,
    *,
    facets: bool = True,
    counts: Callable[[Connection, QuerySpec, bool], Counts] | None = None,
) -> Page:
    """The records of ``state``'s page; raises the query's usage errors (:data:`USAGE_ERRORS`).

    The records are :func:`~ckpt_index.query.spec.run_query`'s (LIMIT and OFFSET of the page),
    with every hyperparameter, as ``query --format json`` gives them.
    ``counts`` answers the total and the facets (default :func:`count_matching`; the app passes
    one that remembers them while the index is unchanged).
    """
    spec = state.spec
    page_spec = replace(spec, limit=state.per_page, offset=state.offset)
    records = run_query(conn, page_spec, params=True)
    total, facet_counts = (counts or count_matching)(conn, spec, facets)
    picked = read_columns(conn, records, state.columns, spec)
    columns = picked.columns if picked.columns is not None else default_columns(picked.first)[0]
    if not any(c.name == "checkpoint_path" for c in columns) and picked.columns is None:
        columns = [*columns, Column("checkpoint_path")]
    return Page(records, columns, total, facet_counts, picked.columns)


def _matching(conn: Connection, spec: QuerySpec) -> Subquery:
    stmt = build_query(replace(spec, limit=None, sort=()), check_names(conn, spec))
    # best_by without group_by is one row (the best): its ORDER BY ... LIMIT 1 stays.
    single = spec.best_by is not None and spec.group_by is None
    return stmt.subquery("matching") if single else stmt.order_by(None).subquery("matching")


def facet_count_query(conn: Connection, spec: QuerySpec) -> Select:
    """The rows ``spec`` matches counted per combination of facet values. Unfiltered, SQLite
    reads it from the covering index ``ix_checkpoints_facets`` alone (PostgreSQL: an index-only
    scan once vacuumed), in index order: no table row and no sort."""
    matching = _matching(conn, spec)
    fields = [matching.c[name] for name in FACETS.values()]
    return select(*fields, func.count()).group_by(*fields)


def count_matching(conn: Connection, spec: QuerySpec, facets: bool = True) -> Counts:
    """How many rows ``spec`` matches and, with ``facets``, their counts per facet value.

    One scan: the rows are grouped by every facet field at once (a few groups per experiment),
    and each facet's counts are summed from those groups.
    """
    if not facets:
        matching = _matching(conn, spec)
        return conn.execute(select(func.count()).select_from(matching)).scalar_one(), {}
    per_facet: dict[str, Counter[Any]] = {facet: Counter() for facet in FACETS}
    total = 0
    for *values, count in conn.execute(facet_count_query(conn, spec)):
        total += count
        for facet, value in zip(FACETS, values, strict=True):
            per_facet[facet][value] += count
    return total, {
        facet: sorted(counter.items(), key=_facet_order)[:FACET_VALUES]
        for facet, counter in per_facet.items()
    }


def _facet_order(item: tuple[Any, int]) -> tuple[int, bool, str]:
    """Most frequent first, then by value, "(none)" last."""
    value, count = item
    return -count, value is None, "" if value is None else str(value)


def counts_key(spec: QuerySpec, facets: bool) -> tuple[Any, ...]:
    """What the counts of ``spec`` depend on: everything but the order of the rows."""
    return (repr(replace(spec, sort=(), limit=None)), facets)
