"""The names a query may use, and the error for one it may not.

``--best-by val/hmaen`` is a usage error, "unknown field or metric 'val/hmaen' (did you mean
'val/hmean'?)", not "no checkpoint matches". A name is a field (a column of ``checkpoints``) or a
name one of :data:`NAME_SOURCES` holds: the metric names present in the index today; parameter
names (the hyperparameters issue) join by appending a source. Knowing a name costs at most one
index seek per source; every name is listed, to suggest one, only after a miss.

Parameters (``params.model.optimizer.lr``) are the second source. A bare name that is no field
and no metric may also name a parameter: exactly, or as the unique dotted suffix of one
(``lr`` -> ``params.model.optimizer.lr``); a suffix of several is an
:class:`AmbiguousNameError` listing them. Parameter names are listed by a loose index scan (one
seek per distinct name on ``ix_param_values_name_*``), never by reading every value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select, text

from ckpt_index.hyperparams import PREFIX as PARAMS_PREFIX
from ckpt_index.index.tables import checkpoint_metrics, checkpoints, param_values
from ckpt_index.query.where import point_at

#: Names that are columns of ``checkpoints``; any other name is a metric.
FIELDS = frozenset(
    c.name
    for c in checkpoints.columns
    # param_set_id is the store's link to a parameter set, not a fact about the checkpoint.
    if c.name not in ("id", "metadata_json", "ckpt_mtime_ns", "sidecar_mtime_ns", "param_set_id")
)


class QueryError(ValueError):
    """A query that cannot be built (a usage error: unknown direction, bad --sort, ...)."""


class UnknownNameError(QueryError):
    """A name that is no field and that the index holds no metric (or parameter) of.

    Attributes:
        name: the name as given.
        suggestions: the closest known names, best first (possibly none).
        text, position: the ``--where`` expression and the name's offset in it, when the name
            came from one (``str()`` then points at it with a caret).
    """

    def __init__(
        self,
        name: str,
        suggestions: Sequence[str] = (),
        *,
        what: str = "field or metric",
        text: str | None = None,
        position: int = 0,
    ) -> None:
        self.name, self.suggestions = name, tuple(suggestions)
        self.text, self.position = text, position
        self.message = f"unknown {what} {name!r}"
        if self.suggestions:
            self.message += f" (did you mean {_alternatives(self.suggestions)}?)"
        super().__init__(self.message)

    def __str__(self) -> str:
        if self.text is None:
            return self.message
        return point_at(self.message, self.text, self.position)


class AmbiguousNameError(QueryError):
    """A bare name that is the dotted suffix of several parameters (``lr``: ``model.lr`` and
    ``scheduler.lr``). ``candidates``: their full names (``params.``...), sorted."""

    def __init__(
        self, name: str, candidates: Sequence[str], *, text: str | None = None, position: int = 0
    ) -> None:
        self.name, self.candidates = name, tuple(candidates)
        self.text, self.position = text, position
        self.message = (
            f"ambiguous name {name!r}: it could be {_alternatives(self.candidates, 'or')} "
            "(write the full name)"
        )
        super().__init__(self.message)

    def __str__(self) -> str:
        if self.text is None:
            return self.message
        return point_at(self.message, self.text, self.position)


def _alternatives(names: Sequence[str], word: str = "or") -> str:
    shown = [repr(name) for name in names]
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} {word} {shown[-1]}"


@dataclass(frozen=True)
class NameSource:
    """Names of one kind that a query may use besides the fields.

    ``prefix`` + name always means this kind (``metrics.hmean``); a bare name is looked up in the
    fields first, then in each source in order.
    """

    prefix: str
    what: str
    has: Callable[[Connection, str], bool]
    names: Callable[[Connection], Iterable[str]]


def _first_name_from(conn: Connection, column: Any, name: str) -> bool:
    """Whether ``column`` holds ``name``: the first name >= ``name`` in the index's order.

    Not ``WHERE name = :n LIMIT 1``: for a name that is not there, PostgreSQL estimates it as
    common as the average name and scans the whole table hoping for an early match (70 ms at
    1.5M parameter values); an ordered range on the index's leading column is one seek anywhere.
    """
    stmt = select(column).where(column >= name).order_by(column).limit(1)
    return conn.execute(stmt).scalar() == name


def _has_metric(conn: Connection, name: str) -> bool:
    # A seek on ix_checkpoint_metrics_name_value.
    return _first_name_from(conn, checkpoint_metrics.c.name, name)


def _metric_names(conn: Connection) -> Iterable[str]:
    return conn.scalars(select(checkpoint_metrics.c.name).distinct())


def _has_param(conn: Connection, name: str) -> bool:
    # A seek on ix_param_values_name_numeric_value.
    return _first_name_from(conn, param_values.c.name, name)


# A loose index scan: each step is one seek for the next name after the last (MIN(name) WHERE
# name > :last), so listing 150 names costs 150 seeks, whatever the number of values. Fixed text:
# no user input reaches it.
_PARAM_NAMES = text(
    """
    WITH RECURSIVE param_names(name) AS (
        SELECT MIN(name) FROM param_values
        UNION ALL
        SELECT (SELECT MIN(p.name) FROM param_values AS p WHERE p.name > param_names.name)
        FROM param_names WHERE param_names.name IS NOT NULL
    )
    SELECT name FROM param_names WHERE name IS NOT NULL
    """
)


def param_names(conn: Connection) -> list[str]:
    """Every parameter name the index holds, sorted (a loose index scan, see above)."""
    return list(conn.execute(_PARAM_NAMES).scalars())


#: Where names other than fields come from (see :class:`NameSource`).
NAME_SOURCES: list[NameSource] = [
    NameSource("metrics.", "metric", _has_metric, _metric_names),
    NameSource(PARAMS_PREFIX, "parameter", _has_param, param_names),
]


class KnownNames:
    """``name in known``: whether a query may use ``name`` on this index (answers cached)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._seen: dict[tuple[str, str], bool] = {}
        self._param_names: list[str] | None = None

    def _has(self, source: NameSource, name: str) -> bool:
        key = (source.prefix, name)
        if key not in self._seen:
            self._seen[key] = bool(name) and source.has(self._conn, name)
        return self._seen[key]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        for source in NAME_SOURCES:
            if name.startswith(source.prefix):
                return self._has(source, name[len(source.prefix) :])
        return name in FIELDS or any(self._has(source, name) for source in NAME_SOURCES)

    def canonical(self, name: str, *, text: str | None = None, position: int = 0) -> str:
        """The name a query uses for ``name``: itself when it is a field, a metric or
        ``prefix.NAME`` of a known one; ``params.FULL`` for a bare parameter name or the unique
        dotted suffix of one. Raises :class:`UnknownNameError` or :class:`AmbiguousNameError`
        (pointing into ``text`` at ``position`` when given)."""
        if name in self:
            if name in FIELDS or any(name.startswith(s.prefix) for s in NAME_SOURCES):
                return name
            if any(self._has(s, name) for s in NAME_SOURCES if s.prefix != PARAMS_PREFIX):
                return name  # a bare metric stays a bare metric
            return PARAMS_PREFIX + name
        if name and not any(name.startswith(s.prefix) for s in NAME_SOURCES):
            ending = "." + name
            found = [n for n in self.param_names() if n.endswith(ending)]
            if len(found) == 1:
                return PARAMS_PREFIX + found[0]
            if found:
                full = [PARAMS_PREFIX + n for n in found]
                raise AmbiguousNameError(name, full, text=text, position=position)
        raise self.unknown(name, text=text, position=position)

    def param_names(self) -> list[str]:
        """Every parameter name of the index (listed once per instance)."""
        if self._param_names is None:
            self._param_names = param_names(self._conn)
        return self._param_names

    def _names(self, source: NameSource) -> list[str]:
        if source.prefix == PARAMS_PREFIX:
            return self.param_names()
        return list(source.names(self._conn))

    def unknown(self, name: str, *, text: str | None = None, position: int = 0) -> UnknownNameError:
        """The error for ``name``, with the closest known names as suggestions."""
        source = next((s for s in NAME_SOURCES if name.startswith(s.prefix)), None)
        if source is not None:
            what = source.what
            candidates = [source.prefix + known for known in self._names(source)]
        else:
            # Parameters are named only in an index that has some (most have none).
            kinds = ["field", *(s.what for s in NAME_SOURCES if s.prefix != PARAMS_PREFIX)]
            kinds += ["parameter"] if self.param_names() else []
            what = f"{', '.join(kinds[:-1])} or {kinds[-1]}"
            others = [s for s in NAME_SOURCES if s.prefix != PARAMS_PREFIX]
            candidates = [*FIELDS, *(n for s in others for n in self._names(s))]
            candidates += [PARAMS_PREFIX + n for n in self.param_names()]
            found = suggest(name, candidates)
            if not found:  # "lrr" is close to the last part of "model.optimizer.lr"
                by_last = {n.rpartition(".")[2]: n for n in reversed(self.param_names())}
                found = [PARAMS_PREFIX + by_last[last] for last in suggest(name, by_last)]
            return UnknownNameError(name, found, what=what, text=text, position=position)
        return UnknownNameError(
            name, suggest(name, candidates), what=what, text=text, position=position
        )


def suggest(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The known names closest to ``name`` (case aside), best first."""
    import difflib  # only after a miss: not on the path of every query

    by_lower: dict[str, str] = {}
    for candidate in sorted(set(candidates)):
        by_lower.setdefault(candidate.lower(), candidate)
    if name.lower() in by_lower:  # only the case differs: that one is meant
        return [by_lower[name.lower()]]
    matches = difflib.get_close_matches(name.lower(), list(by_lower), n=n, cutoff=0.6)
    return [by_lower[match] for match in matches]


__all__ = [
    "FIELDS",
    "NAME_SOURCES",
    "AmbiguousNameError",
    "KnownNames",
    "NameSource",
    "QueryError",
    "UnknownNameError",
    "param_names",
]
