"""Hyperparameters in query results: the ``params`` object of each record, and ``--varying``.

Checkpoints of one run share one parameter set (``checkpoints.param_set_id``), so results never
join ``param_values`` per row: the rows' distinct set ids are collected, each set's values are
read once (one query per chunk of sets) and decoded once, and every row of a set gets the same
``{name: value}`` mapping (do not mutate it: rows share it).

``--varying`` asks which parameters differ among the selected checkpoints. It is answered from
the distinct sets alone, grouping their values by name: a name varies when its values differ
between sets, or when some sets lack it. Rows without a set mixed with rows with one make every
parameter of those sets vary (present for some, missing for others).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, func, literal, select

from ckpt_index.hyperparams import decode_value
from ckpt_index.index.tables import param_values

#: Set ids per statement: well below SQLite's and PostgreSQL's bound-parameter limits.
CHUNK = 900


@dataclass
class ParamsWanted:
    """Which parameters the records of a query carry under ``params``.

    ``every``: all of each row's set (JSON, ``show``, the API). ``names``: only these (columns
    asked for). ``varying``: also those whose values differ among the rows; after the query
    :attr:`found_varying` lists them, in name order.
    """

    every: bool = False
    names: Collection[str] = ()
    varying: bool = False
    found_varying: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.every or bool(self.names) or self.varying


def wanted(params: ParamsWanted | bool | Iterable[str] | None) -> ParamsWanted:
    """``params`` of :func:`~ckpt_index.query.spec.run_query` as a :class:`ParamsWanted`: True
    for every parameter, names for those, a ParamsWanted as it is; False/None for none."""
    if isinstance(params, ParamsWanted):
        return params
    if params is True:
        return ParamsWanted(every=True)
    if not params:
        return ParamsWanted()
    return ParamsWanted(names=tuple(params))


def params_of_sets(
    conn: Connection, set_ids: Iterable[int | None], names: Collection[str] | None = None
) -> dict[int, dict[str, Any]]:
    """``{set id: {name: value}}`` of the distinct ``set_ids`` (None ignored), names in order.

    ``names``: only these parameters (None: all). A set holding none of them maps to ``{}``.
    """
    ids = sorted({i for i in set_ids if i is not None})
    out: dict[int, dict[str, Any]] = {i: {} for i in ids}
    if not ids or (names is not None and not names):
        return out
    p = param_values.c
    wanted_names = sorted(set(names)) if names is not None else None
    for start in range(0, len(ids), CHUNK):
        stmt = select(p.param_set_id, p.name, p.value_type, p.numeric_value, p.text_value).where(
            p.param_set_id.in_(ids[start : start + CHUNK])
        )
        if wanted_names is not None:
            stmt = stmt.where(p.name.in_(wanted_names))
        for set_id, name, value_type, numeric, text in conn.execute(stmt.order_by(p.name)):
            out[set_id][name] = decode_value(value_type, numeric, text)
    return out


def varying_names(conn: Connection, set_ids: Iterable[int | None]) -> list[str]:
    """The parameter names whose values differ among rows with these ``set_ids`` (one per
    selected row, None for a row without parameters), in name order."""
    ids = set(set_ids)
    without = None in ids
    ids.discard(None)
    sets = sorted(i for i in ids if i is not None)
    if not sets or (len(sets) == 1 and not without):
        return []
    p = param_values.c
    # The value as one comparable text: its type, then its text ("int:3" is not "str:3").
    typed = p.value_type + literal(":") + func.coalesce(p.text_value, literal(""))
    # Grouped by an expression, not the column: grouped by ``name``, SQLite walks the whole
    # (name, ...) index in order for every chunk, testing each entry's set, rather than seeking
    # the chunk's sets and sorting their values (10x slower at 10,000 sets).
    key = p.name + literal("")
    seen: dict[str, tuple[int, str, str]] = {}
    for start in range(0, len(sets), CHUNK):
        stmt = (
            select(key, func.count(), func.min(typed), func.max(typed))
            .where(p.param_set_id.in_(sets[start : start + CHUNK]))
            .group_by(key)
        )
        for name, count, low, high in conn.execute(stmt):
            if name in seen:
                before = seen[name]
                count, low, high = before[0] + count, min(before[1], low), max(before[2], high)
            seen[name] = (count, low, high)
    if without:
        return sorted(seen)
    return sorted(
        name for name, (count, low, high) in seen.items() if count < len(sets) or low != high
    )


def load(
    conn: Connection, set_ids: Sequence[int | None], params: ParamsWanted
) -> dict[int | None, dict[str, Any]]:
    """The ``params`` object of rows with these ``set_ids`` (a row without a set gets ``{}``),
    by set id; fills ``params.found_varying`` when it asks for the varying parameters."""
    names: set[str] | None = None if params.every else set(params.names)
    if params.varying:
        params.found_varying = varying_names(conn, set_ids)
        if names is not None:
            names.update(params.found_varying)
    by_set: dict[int | None, dict[str, Any]] = {None: {}}
    for set_id, values in params_of_sets(conn, set_ids, names).items():
        by_set[set_id] = values
    return by_set


__all__ = [
    "ParamsWanted",
    "load",
    "params_of_sets",
    "varying_names",
    "wanted",
]
