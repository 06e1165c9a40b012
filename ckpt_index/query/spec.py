"""Selecting checkpoints from the index: filters, ranking by a field or a logged metric, sorting.

A :class:`QuerySpec` compiles to one SQLAlchemy Core statement; user text reaches SQL only as
bound parameters. Names are fields (columns of ``checkpoints``), metric names in
``checkpoint_metrics`` or hyperparameters (``params.NAME``, or a bare name that only a parameter
has: see :mod:`ckpt_index.query.names`); :func:`run_query` refuses a name that is none, with a
suggestion (:class:`UnknownNameError`), rather than answer "no checkpoint matches".

``best_by`` orders by the metric, then by higher epoch, higher global_step and path, and keeps one
row (or one per experiment with ``group_by``). On a column this is an index scan that stops at the
first group of equal values; on a metric, a seek on ``(name, value)``. A parameter filter is a
list subquery on ``param_values`` evaluated once; a parameter sort or group key is one outer join
on its primary key (see :mod:`ckpt_index.query.param_sql`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, and_, func, literal, select
from sqlalchemy.sql import ColumnElement, Select
from sqlalchemy.sql.selectable import NamedFromClause

from ckpt_index.hyperparams import PREFIX as PARAMS
from ckpt_index.index.records import output_record
from ckpt_index.index.tables import checkpoint_metrics, checkpoints
from ckpt_index.query.names import (
    FIELDS,
    AmbiguousNameError,
    KnownNames,
    QueryError,
    UnknownNameError,
)
from ckpt_index.query.param_sql import ParamConditions, group_keys, param_join, sort_keys
from ckpt_index.query.where import (
    Conditions,
    WhereError,
    compile_where,
    parse_where,
    predicates,
)
from ckpt_index.vocabulary import GROUPABLE

#: What may follow ``name:`` in ``--best-by``/``--sort`` (asc is min, desc is max).
DIRECTIONS = ("max", "min", "asc", "desc")


@dataclass
class QuerySpec:
    best_by: str | None = None
    group_by: str | None = None
    encoder: str | None = None
    architecture: str | None = None
    exp: str | None = None
    phase: str | None = None
    min_epoch: int | None = None
    max_epoch: int | None = None
    where: str | None = None
    sort: Sequence[str] = field(default_factory=tuple)
    limit: int | None = None
    #: Rows skipped before the first one returned (a page of ``ckpt-index serve``).
    offset: int = 0
    include_orphans: bool = False
    #: Checkpoints whose file could not be read (truncated, not a zip) are never an answer
    #: unless asked for, even under a valid sidecar.
    include_unreadable: bool = False
    location: str | None = None
    #: Only pinned checkpoints (``ckpt-index pin``: their sidecar says ``pinned: true``).
    pinned: bool = False


def _metric(name: str) -> ColumnElement:
    m = checkpoint_metrics
    return (
        select(m.c.value)
        .where(m.c.checkpoint_id == checkpoints.c.id, m.c.name == name)
        .scalar_subquery()
    )


def resolve(name: str) -> ColumnElement | Conditions:
    """A field's column, a metric's value for the row (NULL when it was not logged), or the
    conditions on a parameter (``params.NAME``)."""
    if name.startswith(PARAMS):
        return ParamConditions(name[len(PARAMS) :])
    if name.startswith("metrics."):
        return _metric(name[len("metrics.") :])
    return checkpoints.c[name] if name in FIELDS else _metric(name)


#: A name as given -> the name it means (``lr`` -> ``params.model.optimizer.lr``).
Canon = Callable[[str], str]


def _canon(names: Mapping[str, str] | None) -> Canon:
    mapping = dict(names or {})
    return lambda name: mapping.get(name, name)


class _ParamJoins:
    """The outer joins of ``param_values`` that sort and group keys need, one per name."""

    def __init__(self) -> None:
        self._joins: dict[str, tuple[NamedFromClause, ColumnElement[bool]]] = {}

    def alias(self, name: str) -> NamedFromClause:
        """``param_values`` joined for the parameter ``name`` (without ``params.``)."""
        if name not in self._joins:
            self._joins[name] = param_join(name, f"p{len(self._joins) + 1}")
        return self._joins[name][0]

    def apply(self, stmt: Select) -> Select:
        for alias, on in self._joins.values():
            stmt = stmt.outerjoin(alias, on)
        return stmt


def parse_direction(spec: str, *, default: str | None = None) -> tuple[str, str]:
    """``name[:dir]`` -> (name, dir); metric names may contain ':' so only a known suffix splits."""
    name, sep, direction = spec.rpartition(":")
    if sep and direction.lower() in DIRECTIONS:
        direction = direction.lower()
    else:
        name, direction = spec, ""
    if not name:
        raise QueryError(f"empty name in {spec!r}")
    if not direction:
        direction = default or ("min" if "loss" in name.lower() else "max")
    return name, {"asc": "min", "desc": "max"}.get(direction, direction)


def glob_to_like(pattern: str) -> str:
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _filters(spec: QuerySpec, canon: Canon, selective: Set[str]) -> list[ColumnElement]:
    c = checkpoints.c
    conditions: list[ColumnElement] = []
    if not spec.include_orphans:
        conditions.append(c.checkpoint_exists.is_(True))
    if not spec.include_unreadable:
        conditions.append(c.status != literal("unreadable"))
    if spec.location is not None:
        conditions.append(c.location == spec.location)
    if spec.pinned:
        conditions.append(c.pinned.is_(True))
    if spec.encoder is not None:
        conditions.append(c.encoder == spec.encoder)
    if spec.architecture is not None:
        conditions.append(c.architecture == spec.architecture)
    if spec.exp is not None:
        conditions.append(c.exp_name.like(glob_to_like(spec.exp), escape="\\"))
    if spec.phase is not None:
        conditions.append(c.training_phase == spec.phase)
    if spec.min_epoch is not None:
        conditions.append(c.epoch >= spec.min_epoch)
    if spec.max_epoch is not None:
        conditions.append(c.epoch <= spec.max_epoch)
    if spec.where is not None:  # "" is an empty expression (a usage error), not "no filter"
        node = parse_where(spec.where)
        # One best row by a column or metric: walk its index, probing a parameter filter that
        # selects many sets; one that selects few drives the query (see selective_params).
        probe = spec.best_by is not None and spec.group_by is None

        def resolved(name: str) -> ColumnElement | Conditions:
            name = canon(name)
            if name.startswith(PARAMS):
                short = name[len(PARAMS) :]
                return ParamConditions(
                    short, probe=probe and short not in selective, drive=short in selective
                )
            return resolve(name)

        conditions.append(compile_where(node, resolved))
    return conditions


def _tie_break() -> list[ColumnElement]:
    c = checkpoints.c
    # NULLS LAST spelled out: PostgreSQL sorts NULL first in DESC, SQLite last.
    # A last.ckpt that copies an epoch file loses the tie to it (NULL: not known to be a copy).
    is_last = func.coalesce(c.is_last, False)
    return [
        c.epoch.desc().nulls_last(),
        c.global_step.desc().nulls_last(),
        is_last.asc(),
        c.checkpoint_path.asc(),
    ]


def _ordering(sort: Sequence[str], canon: Canon, joins: _ParamJoins) -> list[ColumnElement]:
    order: list[ColumnElement] = []
    for item in sort:
        name, direction = parse_direction(item, default="asc")
        name = canon(name)
        if name.startswith(PARAMS):
            # Numbers by value first, then the values that are no number by their text.
            exprs: Sequence[ColumnElement] = sort_keys(joins.alias(name[len(PARAMS) :]))
        else:
            column = resolve(name)
            assert not isinstance(column, Conditions)
            exprs = [column]
        for expr in exprs:
            order.append(_directed(expr, direction))
    return order


def _directed(expr: ColumnElement, direction: str) -> ColumnElement:
    return expr.desc().nulls_last() if direction == "max" else expr.asc().nulls_last()


def _check(spec: QuerySpec, canon: Canon) -> None:
    """Refuse a spec that asks for nothing sensible (a usage error, before any SQL)."""
    group = canon(spec.group_by) if spec.group_by is not None else None
    if group is not None and group not in GROUPABLE and not group.startswith(PARAMS):
        raise QueryError(
            f"--group-by takes one of {', '.join(GROUPABLE)} or params.NAME, not {spec.group_by!r}"
        )
    if spec.group_by is not None and spec.best_by is None:
        raise QueryError("--group-by needs --best-by METRIC")
    if spec.limit is not None and spec.limit < 0:
        raise QueryError("--limit must be >= 0")


def build_query(
    spec: QuerySpec, names: Mapping[str, str] | None = None, selective: Set[str] = frozenset()
) -> Select:
    """The statement selecting the ids (and row columns) that ``spec`` asks for.

    ``names``: what :func:`check_names` resolved the names as given to (a bare parameter name
    to ``params.FULL``); without it every name is taken as written. ``selective``: the
    parameters (without ``params.``) whose filters select few sets (:func:`selective_params`).
    """
    canon = _canon(names)
    _check(spec, canon)
    c = checkpoints.c
    conditions = _filters(spec, canon, selective)
    joins = _ParamJoins()
    stmt = select(checkpoints)

    if spec.best_by is None:
        order = _ordering(spec.sort, canon, joins) or [c.checkpoint_path.asc()]
        stmt = joins.apply(stmt).where(*conditions).order_by(*order, c.checkpoint_path.asc())
        return _paged(stmt, spec)

    name, direction = parse_direction(spec.best_by)
    name = canon(name)
    forced_metric = name.startswith("metrics.")
    if forced_metric:
        name = name[len("metrics.") :]
    metric: ColumnElement
    if name.startswith(PARAMS):  # the best by a numeric parameter (rows without it left out)
        metric = joins.alias(name[len(PARAMS) :]).c.numeric_value
    elif name in FIELDS and not forced_metric:
        metric = c[name]
    else:
        best = checkpoint_metrics.alias("best")
        stmt = stmt.join(best, and_(best.c.checkpoint_id == c.id, best.c.name == name))
        metric = best.c.value
    conditions.append(metric.is_not(None))

    if spec.group_by is None:
        # One row: the best, ties broken by the higher epoch, the higher step, then the path.
        stmt = joins.apply(stmt).where(*conditions)
        metric_order = metric.desc() if direction == "max" else metric.asc()
        limit = 1 if spec.limit is None else min(1, spec.limit)
        return stmt.order_by(metric_order, *_tie_break()).limit(limit).offset(spec.offset or None)
    return _best_per_group(stmt, conditions, spec, metric, direction, canon, joins)


def _best_per_group(
    stmt: Select,
    conditions: list[ColumnElement],
    spec: QuerySpec,
    metric: ColumnElement,
    direction: str,
    canon: Canon,
    joins: _ParamJoins,
) -> Select:
    """The best row of each ``group_by`` value: rows ranked within their group by the metric (ties
    broken as for one best), then rank 1 kept, ordered by ``sort`` or else by the metric.

    A parameter's groups are its values: numbers by value (0.1 and 0.10 are one group), other
    values by text, and the rows without it one more group."""
    assert spec.group_by is not None
    metric_order = metric.desc() if direction == "max" else metric.asc()
    group_name = canon(spec.group_by)
    groups: Sequence[ColumnElement]
    if group_name.startswith(PARAMS):
        groups = group_keys(joins.alias(group_name[len(PARAMS) :]))
    else:
        groups = [checkpoints.c[group_name]]
    sort_columns = _sort_columns(spec.sort, canon, joins)
    rank = func.row_number().over(partition_by=groups, order_by=[metric_order, *_tie_break()])
    extra = [expr.label(f"_sort{i}") for i, (expr, _) in enumerate(sort_columns)]
    # Ranked narrow (the id, the rank and the sort keys): the window sorts every selected row,
    # and carrying whole rows through it costs several times more. The winners' rows are then
    # fetched by id.
    ranked = (
        joins.apply(stmt)
        .where(*conditions)
        .with_only_columns(checkpoints.c.id, rank.label("_rank"), metric.label("_metric"), *extra)
        .subquery("ranked")
    )
    outer_metric = ranked.c._metric.desc() if direction == "max" else ranked.c._metric.asc()
    order = [_directed(ranked.c[f"_sort{i}"], d) for i, (_, d) in enumerate(sort_columns)]
    outer = (
        select(checkpoints)
        .join(ranked, ranked.c.id == checkpoints.c.id)
        .where(ranked.c._rank == literal(1))
        .order_by(*(order or [outer_metric]), checkpoints.c.checkpoint_path)
    )
    return _paged(outer, spec)


def _paged(stmt: Select, spec: QuerySpec) -> Select:
    """``stmt`` with the spec's LIMIT and OFFSET (none when not asked for)."""
    stmt = stmt.limit(spec.limit) if spec.limit is not None else stmt
    return stmt.offset(spec.offset) if spec.offset else stmt


def _sort_columns(
    sort: Sequence[str], canon: Canon, joins: _ParamJoins
) -> list[tuple[ColumnElement, str]]:
    """With ``group_by``: the expressions (and directions) the groups' best rows are sorted by,
    carried out of the ranking subquery. Fields and parameters; not metrics (a metric other than
    the ranked one is not the group's)."""
    out: list[tuple[ColumnElement, str]] = []
    for item in sort:
        name, direction = parse_direction(item, default="asc")
        name = canon(name)
        if name.startswith(PARAMS):
            keys = sort_keys(joins.alias(name[len(PARAMS) :]))
            out += [(key, direction) for key in keys]
        elif name in FIELDS:
            out.append((checkpoints.c[name], direction))
        else:
            raise QueryError(
                f"with --group-by, --sort takes a field or a parameter, not the metric {name!r}"
            )
    return out


def fetch_metrics(conn: Connection, ids: Sequence[int]) -> dict[int, dict[str, float]]:
    m = checkpoint_metrics.c
    metrics: dict[int, dict[str, float]] = {i: {} for i in ids}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        for row_id, name, value in conn.execute(
            select(m.checkpoint_id, m.name, m.value).where(m.checkpoint_id.in_(chunk))
        ):
            metrics[row_id][name] = value
    return metrics


def check_names(conn: Connection, spec: QuerySpec) -> dict[str, str]:
    """Refuse, before the query runs, a name that is neither a field nor in the index
    (:class:`UnknownNameError`), a bare name several parameters end with
    (:class:`AmbiguousNameError`) and a ``name:direction`` whose direction is none (QueryError).

    Returns what each name as given means (for :func:`build_query`): ``lr`` ->
    ``params.model.optimizer.lr``. A field costs nothing; a metric or parameter name one index
    seek; a bare parameter suffix one list of the parameter names (see
    :mod:`ckpt_index.query.names`).
    """
    known = KnownNames(conn)
    names: dict[str, str] = {}
    ranked = [("--best-by", spec.best_by)] if spec.best_by is not None else []
    for option, item in [*ranked, *(("--sort", item) for item in spec.sort)]:
        name = _check_ranked(known, option, item)
        names[name] = known.canonical(name)
    if spec.group_by is not None and spec.group_by not in GROUPABLE:
        names[spec.group_by] = known.canonical(spec.group_by)
    if spec.where is not None:
        for predicate in predicates(parse_where(spec.where)):
            names[predicate.name] = known.canonical(
                predicate.name, text=spec.where, position=predicate.position
            )
    return names


def _check_ranked(known: KnownNames, option: str, item: str) -> str:
    """The name of ``name[:direction]`` once it is known to be a name (or a parameter suffix)."""
    name, _ = parse_direction(item)
    try:
        known.canonical(name)
        return name
    except UnknownNameError:
        pass
    head, sep, tail = item.rpartition(":")
    if sep and head and tail.isalpha():  # "hmean:descending": a word that is no direction
        known.canonical(head)  # raises for an unknown name
        raise QueryError(
            f"{option} {item!r}: unknown direction {tail!r} "
            f"(use one of {', '.join(DIRECTIONS)}; asc is min, desc is max)"
        )
    raise known.unknown(name)


#: A parameter filter selecting at most this many sets drives a one-best query: fetching and
#: sorting their rows beats walking the ranking index until one of them comes up.
SELECTIVE_SETS = 50


def selective_params(
    conn: Connection, spec: QuerySpec, names: Mapping[str, str] | None = None
) -> frozenset[str]:
    """The parameters whose every ``where`` condition selects at most :data:`SELECTIVE_SETS`
    sets, for a query that keeps one best row (else there is no choice to make). Each costs one
    bounded count on the ``(name, value, param_set_id)`` index."""
    if spec.where is None or spec.best_by is None or spec.group_by is not None:
        return frozenset()
    canon = _canon(names)
    seen: list[tuple[str, Any, bool]] = []

    class Recording(ParamConditions):
        def condition(self, node: Any, negated: bool) -> ColumnElement[bool]:
            seen.append((self.name, node, negated))
            return super().condition(node, negated)

    def record(name: str) -> ColumnElement | Conditions:
        name = canon(name)
        if name.startswith(PARAMS):
            return Recording(name[len(PARAMS) :])
        return resolve(name)

    compile_where(parse_where(spec.where), record)
    small: dict[str, bool] = {}
    for name, node, negated in seen:
        sets = ParamConditions(name).sets(node, negated)
        count = None
        if sets is not None:
            bounded = sets.limit(SELECTIVE_SETS + 1).subquery()
            count = conn.execute(select(func.count()).select_from(bounded)).scalar_one()
        fits = count is not None and count <= SELECTIVE_SETS
        small[name] = small.get(name, True) and fits
    return frozenset(name for name, fits in small.items() if fits)


def run_query(conn: Connection, spec: QuerySpec, *, params: Any = False) -> list[dict[str, Any]]:
    """The records ``spec`` selects, in order, each with all its metrics and, when ``params``
    asks for them (True: all; names; a :class:`~ckpt_index.query.params.ParamsWanted`), its
    hyperparameters under ``params``.

    Raises :class:`WhereError` for a malformed ``where``, :class:`UnknownNameError` for a name
    that is no field and no metric in the index, :class:`QueryError` for other usage errors.
    """
    from ckpt_index.query import params as query_params

    # First: "unknown 'hmaen'" rather than "not the metric 'hmaen'".
    names = check_names(conn, spec)
    stmt = build_query(spec, names, selective_params(conn, spec, names))
    rows = [dict(row._mapping) for row in conn.execute(stmt)]
    metrics = fetch_metrics(conn, [row["id"] for row in rows])
    wanted = query_params.wanted(params)
    if not wanted:
        return [output_record(row, metrics[row["id"]]) for row in rows]
    sets = query_params.load(conn, [row["param_set_id"] for row in rows], wanted)
    return [output_record(row, metrics[row["id"]], sets[row["param_set_id"]]) for row in rows]


def find_checkpoint(
    conn: Connection, checkpoint_path: str, location: str | None = None
) -> dict[str, Any] | None:
    """The full record of one checkpoint, with its whole sidecar under ``metadata``.

    The row of ``location`` (default: this machine's) is preferred; another location's row of the
    same path is returned when this one has none.
    """
    import json

    from ckpt_index.index.engine import resolve_location

    c = checkpoints.c
    here = resolve_location(location)
    row = conn.execute(
        select(checkpoints)
        .where(c.checkpoint_path == checkpoint_path)
        .order_by((c.location == here).desc(), c.location)
        .limit(1)
    ).first()
    if row is None:
        return None
    from ckpt_index.query.params import params_of_sets

    data = dict(row._mapping)
    set_id = data["param_set_id"]
    params = params_of_sets(conn, [set_id]).get(set_id, {}) if set_id is not None else {}
    record = output_record(data, fetch_metrics(conn, [data["id"]])[data["id"]], params)
    record["warnings"] = data["warnings"]
    # What loading it would run (None: its pickle was not read; `show` reads it then), whether
    # its sidecar is older than it, and whether its folder could be listed at the last sync.
    record["unsafe_globals"] = (
        json.loads(data["unsafe_globals"]) if data["unsafe_globals"] else None
    )
    record["stale"] = None if data["stale"] is None else bool(data["stale"])
    record["scan_error"] = data["scan_error"]
    record["metadata"] = json.loads(data["metadata_json"]) if data["metadata_json"] else None
    return record


__all__ = [
    "FIELDS",
    "AmbiguousNameError",
    "QueryError",
    "QuerySpec",
    "UnknownNameError",
    "WhereError",
    "build_query",
    "check_names",
    "find_checkpoint",
    "run_query",
    "selective_params",
]
