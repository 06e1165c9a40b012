"""The names a query may use, and the error for one it may not.

``--best-by val/hmaen`` is a usage error, "unknown field or metric 'val/hmaen' (did you mean
'val/hmean'?)", not "no checkpoint matches". A name is a field (a column of ``checkpoints``) or a
name one of :data:`NAME_SOURCES` holds: the metric names present in the index today; parameter
names (the hyperparameters issue) join by appending a source. Knowing a name costs at most one
index seek per source; every name is listed, to suggest one, only after a miss.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, literal, select

from ckpt_index.index.tables import checkpoint_metrics, checkpoints
from ckpt_index.query.where import point_at

#: Names that are columns of ``checkpoints``; any other name is a metric.
FIELDS = frozenset(
    c.name
    for c in checkpoints.columns
    if c.name not in ("id", "metadata_json", "ckpt_mtime_ns", "sidecar_mtime_ns")
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


def _alternatives(names: Sequence[str]) -> str:
    shown = [repr(name) for name in names]
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"


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


def _has_metric(conn: Connection, name: str) -> bool:
    # A seek on ix_checkpoint_metrics_name_value.
    m = checkpoint_metrics.c
    return conn.execute(select(literal(1)).where(m.name == name).limit(1)).first() is not None


def _metric_names(conn: Connection) -> Iterable[str]:
    return conn.scalars(select(checkpoint_metrics.c.name).distinct())


#: Where names other than fields come from (see :class:`NameSource`).
NAME_SOURCES: list[NameSource] = [NameSource("metrics.", "metric", _has_metric, _metric_names)]


class KnownNames:
    """``name in known``: whether a query may use ``name`` on this index (answers cached)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._seen: dict[tuple[str, str], bool] = {}

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

    def unknown(self, name: str, *, text: str | None = None, position: int = 0) -> UnknownNameError:
        """The error for ``name``, with the closest known names as suggestions."""
        source = next((s for s in NAME_SOURCES if name.startswith(s.prefix)), None)
        if source is not None:
            what = source.what
            candidates = [source.prefix + known for known in source.names(self._conn)]
        else:
            kinds = ["field", *(s.what for s in NAME_SOURCES)]
            what = f"{', '.join(kinds[:-1])} or {kinds[-1]}"
            candidates = [*FIELDS, *(n for s in NAME_SOURCES for n in s.names(self._conn))]
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


__all__ = ["FIELDS", "NAME_SOURCES", "KnownNames", "NameSource", "QueryError", "UnknownNameError"]
