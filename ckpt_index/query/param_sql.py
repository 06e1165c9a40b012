"""Hyperparameters in query SQL: ``params.NAME`` in ``--where``, ``--sort``, ``--group-by``.

A parameter lives in ``param_values`` under the set a checkpoint points at
(``checkpoints.param_set_id``), so two shapes are used, and no other:

- a filter is a list subquery, evaluated once, never per checkpoint row::

    checkpoints.param_set_id IN (SELECT param_set_id FROM param_values
                                 WHERE name = :n AND numeric_value < :v)

- a sort or group key is one outer join on the primary key of ``param_values``::

    LEFT OUTER JOIN param_values AS p1
      ON p1.param_set_id = checkpoints.param_set_id AND p1.name = :n

Values compare by the literal's type: a number with ``numeric_value`` (``0.1`` and ``0.10`` are
one value, an int and a float of equal value too), a string with ``text_value`` (every value's
text: ``'0.01'``, ``'adam'``, ``'[1,2]'``), ``true``/``false`` with booleans only. A value of
another type is simply not equal (``params.optimizer != 1`` matches ``'adam'``). A checkpoint
without the parameter (or with a null value) matches no comparison and no negated one, like a
checkpoint without a metric; only ``is null`` matches it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Integer, and_, case, literal, not_, or_, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import ColumnElement, Select
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.sql.selectable import NamedFromClause

from ckpt_index.hyperparams import PREFIX
from ckpt_index.index.tables import checkpoints, param_values
from ckpt_index.query.where import Compare, Conditions, In, IsNull, Like, WhereTypeError

_NEGATE_OP = {"!=": "="}  # "x != v" is "not x = v": present, and not equal


class ParamConditions(Conditions):
    """The ``--where`` conditions on one parameter (``name`` without the ``params.`` prefix).

    ``probe``: the query walks another index in order and stops at the first match (one best
    by an indexed column): each row is then probed against the (once materialised) list of sets
    rather than the list driving the query through ``ix_checkpoints_param_set_id``. SQLite's
    planner, which cannot know how many rows the list selects, would otherwise fetch and sort
    every matching row (half of 100,000 for ``lr < 1e-3`` over a sweep) to keep one.
    """

    def __init__(self, name: str, *, probe: bool = False, drive: bool = False) -> None:
        self.name, self.probe, self.drive = name, probe, drive

    def condition(self, node: Compare | Like | In | IsNull, negated: bool) -> ColumnElement[bool]:
        v = param_values.c
        set_id: ColumnElement[Any] = checkpoints.c.param_set_id
        if self.probe:
            set_id = _probed(set_id)
        sets = self.sets(node, negated)
        if sets is not None:
            if self.drive:
                return _listed(set_id, sets.scalar_subquery())
            return set_id.in_(sets)
        # "is null" is never unknown: a checkpoint without the parameter has a null value.
        present = select(v.param_set_id).where(v.name == self.name, v.text_value.is_not(None))
        return or_(set_id.is_(None), not_(set_id.in_(present)))

    def sets(self, node: Compare | Like | In | IsNull, negated: bool) -> Select | None:
        """The ids of the sets the condition selects (None for ``is null``, which also
        selects the checkpoints that have no set)."""
        v = param_values.c
        if isinstance(node, IsNull):
            if node.negated == negated:
                return None
            return select(v.param_set_id).where(v.name == self.name, v.text_value.is_not(None))
        match, flip = _match(node, PREFIX + self.name)
        if flip != negated:
            # Present with a value (not null) for which the condition is false.
            where = [v.name == self.name, v.text_value.is_not(None), not_(match)]
        else:
            where = [v.name == self.name, match]
        return select(v.param_set_id).where(*where)


class _probed(FunctionElement[int]):
    """A column that SQLite must not seek on (``+column``, its documented way to say so), so
    that it walks the ranking index instead. PostgreSQL plans from real row estimates and gets
    the column as it is (an expression there would turn the list into a per-row lookup)."""

    name = "probed"
    inherit_cache = True
    type = Integer()


@compiles(_probed)
def _compile_probed(element: _probed, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.clauses, **kw))


@compiles(_probed, "sqlite")
def _compile_probed_sqlite(element: _probed, compiler: Any, **kw: Any) -> str:
    return "+" + str(compiler.process(element.clauses, **kw))


class _listed(FunctionElement[bool]):
    """``column IN (sets)`` for a list known to be short (``drive``: a selective filter).

    On PostgreSQL ``column = ANY(ARRAY(sets))``: the list is evaluated first (an init plan) and
    drives the query through ``ix_checkpoints_param_set_id``. As ``IN``, PostgreSQL plans a
    semi-join from its estimate of the list's size, and a filter that matches one run among
    10,000 (``params.seed = 7``) was planned as a walk of the whole hmean index (85 ms at
    100,000 checkpoints instead of under 1 ms).
    """

    # No Boolean type: SQLAlchemy would then render it as "(...) = 1" on SQLite, which has no
    # boolean type, and the planner would no longer see an IN list it can drive with.
    name = "listed"
    inherit_cache = True


@compiles(_listed)
def _compile_listed(element: _listed, compiler: Any, **kw: Any) -> str:
    column, sets = list(element.clauses)
    return str(compiler.process(column.in_(sets.element), **kw))


@compiles(_listed, "postgresql")
def _compile_listed_postgresql(element: _listed, compiler: Any, **kw: Any) -> str:
    column, sets = list(element.clauses)
    return f"{compiler.process(column, **kw)} = ANY(ARRAY{compiler.process(sets, **kw)})"


def _match(node: Compare | Like | In, shown: str) -> tuple[ColumnElement[bool], bool]:
    """The condition on one ``param_values`` row (never NULL on a row with a text value, so
    that its negation is exact) and whether the node asks for its negation."""
    v = param_values.c
    if isinstance(node, Like):
        return v.text_value.like(literal(node.pattern)), node.negated
    if isinstance(node, In):
        nums = [literal(float(x)) for x in node.values if _is_number(x)]
        texts = [literal(x) for x in node.values if isinstance(x, str)]
        bools = [literal("true" if x else "false") for x in node.values if isinstance(x, bool)]
        parts: list[ColumnElement[bool]] = []
        if nums:
            parts.append(and_(v.numeric_value.is_not(None), v.numeric_value.in_(nums)))
        if texts:
            parts.append(v.text_value.in_(texts))
        if bools:
            parts.append(and_(v.value_type == literal("bool"), v.text_value.in_(bools)))
        return or_(*parts), node.negated
    op, flip = _NEGATE_OP.get(node.op, node.op), node.op in _NEGATE_OP
    value = node.value
    if isinstance(value, bool):
        if op != "=":
            raise WhereTypeError(f"{shown}: true and false compare only with = or !=")
        text = literal("true" if value else "false")
        return and_(v.value_type == literal("bool"), v.text_value == text), flip
    if _is_number(value):
        column, bound = v.numeric_value, literal(float(value))
        return and_(column.is_not(None), _OPS[op](column, bound)), flip
    return _OPS[op](v.text_value, literal(str(value))), flip


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_OPS = {
    "=": lambda a, b: a == b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def param_join(name: str, alias_name: str) -> tuple[NamedFromClause, ColumnElement[bool]]:
    """``param_values AS alias_name`` and the ON clause joining it to the rows for ``name``
    (without the ``params.`` prefix); outer-join it: rows without the parameter keep NULLs."""
    alias = param_values.alias(alias_name)
    on = and_(alias.c.param_set_id == checkpoints.c.param_set_id, alias.c.name == literal(name))
    return alias, on


def sort_keys(alias: NamedFromClause) -> tuple[ColumnElement[Any], ColumnElement[Any]]:
    """Numbers by value, then the rest by text (what ``--sort params.X`` orders by)."""
    return alias.c.numeric_value, alias.c.text_value


def group_keys(alias: NamedFromClause) -> tuple[ColumnElement[Any], ColumnElement[Any]]:
    """The group of a row: its number when the value is one, else its text; rows without the
    parameter (or with a null value) are one group (both keys NULL)."""

    numeric = alias.c.numeric_value
    return numeric, case((numeric.is_(None), alias.c.text_value), else_=None)


__all__ = ["ParamConditions", "group_keys", "param_join", "sort_keys"]
