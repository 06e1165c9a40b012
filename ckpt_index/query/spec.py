"""Selecting checkpoints from the index: filters, ranking by a field or a logged metric, sorting.

A :class:`QuerySpec` compiles to one SQLAlchemy Core statement; user text reaches SQL only as
bound parameters. Names are fields (columns of ``checkpoints``) or, failing that, metric names in
``checkpoint_metrics``; :func:`run_query` refuses a name that is neither, with a suggestion
(:class:`UnknownNameError`), rather than answer "no checkpoint matches".

``best_by`` orders by the metric, then by higher epoch, higher global_step and path, and keeps one
row (or one per experiment with ``group_by``). On a column this is an index scan that stops at the
first group of equal values; on a metric, a seek on ``(name, value)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, and_, func, literal, select
from sqlalchemy.sql import ColumnElement, Select, Subquery

from ckpt_index.index.records import output_record
from ckpt_index.index.tables import checkpoint_metrics, checkpoints
from ckpt_index.query.names import FIELDS, KnownNames, QueryError, UnknownNameError
from ckpt_index.query.where import WhereError, compile_where, parse_where, predicates
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
    include_orphans: bool = False
    #: Checkpoints whose file could not be read (truncated, not a zip) are never an answer
    #: unless asked for, even under a valid sidecar.
    include_unreadable: bool = False
    location: str | None = None


def _metric(name: str) -> ColumnElement:
    m = checkpoint_metrics
    return (
        select(m.c.value)
        .where(m.c.checkpoint_id == checkpoints.c.id, m.c.name == name)
        .scalar_subquery()
    )


def resolve(name: str) -> ColumnElement:
    """A field's column, or a metric's value for the row (NULL when it was not logged)."""
    if name.startswith("metrics."):
        return _metric(name[len("metrics.") :])
    return checkpoints.c[name] if name in FIELDS else _metric(name)


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


def _filters(spec: QuerySpec) -> list[ColumnElement]:
    c = checkpoints.c
    conditions: list[ColumnElement] = []
    if not spec.include_orphans:
        conditions.append(c.checkpoint_exists.is_(True))
    if not spec.include_unreadable:
        conditions.append(c.status != literal("unreadable"))
    if spec.location is not None:
        conditions.append(c.location == spec.location)
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
        conditions.append(compile_where(parse_where(spec.where), resolve))
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


def _ordering(sort: Sequence[str]) -> list[ColumnElement]:
    order: list[ColumnElement] = []
    for item in sort:
        name, direction = parse_direction(item, default="asc")
        expr = resolve(name)
        order.append(expr.desc().nulls_last() if direction == "max" else expr.asc().nulls_last())
    return order


def _check(spec: QuerySpec) -> None:
    """Refuse a spec that asks for nothing sensible (a usage error, before any SQL)."""
    if spec.group_by is not None and spec.group_by not in GROUPABLE:
        raise QueryError(f"--group-by takes one of {', '.join(GROUPABLE)}, not {spec.group_by!r}")
    if spec.group_by is not None and spec.best_by is None:
        raise QueryError("--group-by needs --best-by METRIC")
    if spec.limit is not None and spec.limit < 0:
        raise QueryError("--limit must be >= 0")


def build_query(spec: QuerySpec) -> Select:
    """The statement selecting the ids (and row columns) that ``spec`` asks for."""
    _check(spec)
    c = checkpoints.c
    conditions = _filters(spec)
    stmt = select(checkpoints)

    if spec.best_by is None:
        order = _ordering(spec.sort) or [c.checkpoint_path.asc()]
        stmt = stmt.where(*conditions).order_by(*order, c.checkpoint_path.asc())
        return stmt.limit(spec.limit) if spec.limit is not None else stmt

    name, direction = parse_direction(spec.best_by)
    forced_metric = name.startswith("metrics.")
    if forced_metric:
        name = name[len("metrics.") :]
    metric: ColumnElement
    if name in FIELDS and not forced_metric:
        metric = c[name]
    else:
        best = checkpoint_metrics.alias("best")
        stmt = stmt.join(best, and_(best.c.checkpoint_id == c.id, best.c.name == name))
        metric = best.c.value
    conditions.append(metric.is_not(None))
    stmt = stmt.where(*conditions)

    if spec.group_by is None:
        # One row: the best, ties broken by the higher epoch, the higher step, then the path.
        metric_order = metric.desc() if direction == "max" else metric.asc()
        limit = 1 if spec.limit is None else min(1, spec.limit)
        return stmt.order_by(metric_order, *_tie_break()).limit(limit)
    return _best_per_group(stmt, spec, metric, direction)


def _best_per_group(stmt: Select, spec: QuerySpec, metric: ColumnElement, direction: str) -> Select:
    """The best row of each ``group_by`` value: rows ranked within their group by the metric (ties
    broken as for one best), then rank 1 kept, ordered by ``sort`` or else by the metric."""
    assert spec.group_by is not None
    metric_order = metric.desc() if direction == "max" else metric.asc()
    group = checkpoints.c[spec.group_by]
    rank = func.row_number().over(partition_by=group, order_by=[metric_order, *_tie_break()])
    ranked = stmt.add_columns(rank.label("_rank"), metric.label("_metric")).subquery("ranked")
    outer_metric = ranked.c._metric.desc() if direction == "max" else ranked.c._metric.asc()
    outer = (
        select(*[ranked.c[col.name] for col in checkpoints.columns])
        .where(ranked.c._rank == literal(1))
        .order_by(*(_outer_sort(ranked, spec.sort) or [outer_metric]), ranked.c.checkpoint_path)
    )
    return outer.limit(spec.limit) if spec.limit is not None else outer


def _outer_sort(ranked: Subquery, sort: Sequence[str]) -> list[ColumnElement]:
    order: list[ColumnElement] = []
    for item in sort:
        name, direction = parse_direction(item, default="asc")
        if name not in FIELDS:
            raise QueryError(f"with --group-by, --sort takes a field, not the metric {name!r}")
        col = ranked.c[name]
        order.append(col.desc().nulls_last() if direction == "max" else col.asc().nulls_last())
    return order


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


def check_names(conn: Connection, spec: QuerySpec) -> None:
    """Refuse, before the query runs, a name that is neither a field nor in the index
    (:class:`UnknownNameError`) and a ``name:direction`` whose direction is none (QueryError).

    A field costs nothing; a metric name one index seek (see :mod:`ckpt_index.query.names`).
    """
    known = KnownNames(conn)
    ranked = [("--best-by", spec.best_by)] if spec.best_by is not None else []
    for option, item in [*ranked, *(("--sort", item) for item in spec.sort)]:
        _check_ranked(known, option, item)
    if spec.where is not None:
        for predicate in predicates(parse_where(spec.where)):
            if predicate.name not in known:
                raise known.unknown(predicate.name, text=spec.where, position=predicate.position)


def _check_ranked(known: KnownNames, option: str, item: str) -> None:
    name, _ = parse_direction(item)
    if name in known:
        return
    head, sep, tail = item.rpartition(":")
    if sep and head and tail.isalpha():  # "hmean:descending": a word that is no direction
        if head in known:
            raise QueryError(
                f"{option} {item!r}: unknown direction {tail!r} "
                f"(use one of {', '.join(DIRECTIONS)}; asc is min, desc is max)"
            )
        raise known.unknown(head)
    raise known.unknown(name)


def run_query(conn: Connection, spec: QuerySpec) -> list[dict[str, Any]]:
    """The records ``spec`` selects, in order, each with all its metrics.

    Raises :class:`WhereError` for a malformed ``where``, :class:`UnknownNameError` for a name
    that is no field and no metric in the index, :class:`QueryError` for other usage errors.
    """
    check_names(conn, spec)  # first: "unknown 'hmaen'" rather than "not the metric 'hmaen'"
    stmt = build_query(spec)
    rows = [dict(row._mapping) for row in conn.execute(stmt)]
    metrics = fetch_metrics(conn, [row["id"] for row in rows])
    return [output_record(row, metrics[row["id"]]) for row in rows]


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
    data = dict(row._mapping)
    record = output_record(data, fetch_metrics(conn, [data["id"]])[data["id"]])
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
    "QueryError",
    "QuerySpec",
    "UnknownNameError",
    "WhereError",
    "build_query",
    "check_names",
    "find_checkpoint",
    "run_query",
]
