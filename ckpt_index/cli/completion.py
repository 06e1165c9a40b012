"""Shell completion of values from the index: metric names, encoders, experiment names.

Click completes commands and options itself (``_CKPT_INDEX_COMPLETE=bash_source ckpt-index``);
the callbacks here add the values an index holds. Each opens the index the command would use
(``--db`` if already typed, else ``$CKPT_INDEX_DB`` or ``./ckpt_index.db``) read-only, so
completing never creates, migrates or locks an index, and on any error completes nothing: a
shell prompt must never show a traceback.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import click
from click.shell_completion import CompletionItem

from ckpt_index.vocabulary import CANONICAL_METRICS, GROUPABLE

__all__ = [
    "complete_architecture",
    "complete_encoder",
    "complete_exp",
    "complete_metric",
    "complete_sort_key",
]

#: Fields offered besides metric names: what a person sorts or ranks by most.
_SORT_FIELDS = ("epoch", "global_step", "created_at", *GROUPABLE)
#: At most this many values from the index per completion.
_MAX_VALUES = 500


def _index_values(ctx: click.Context, query: Callable[[Any], Iterable[Any]]) -> list[str]:
    """Distinct non-empty strings ``query(connection)`` yields from the index; [] on any error."""
    try:
        from ckpt_index.index.engine import create_index_engine, disposing, resolve_db_url

        url = resolve_db_url(ctx.params.get("db"))
        with disposing(create_index_engine(url, readonly=True)) as engine:
            with engine.connect() as conn:
                return sorted({str(v) for v in query(conn) if v not in (None, "")})
    except Exception:  # noqa: BLE001 - completion must not fail, whatever the index is
        return []


def _distinct(column_name: str) -> Callable[[Any], Iterable[Any]]:
    def query(conn: Any) -> Iterable[Any]:
        from sqlalchemy import select

        from ckpt_index.index.tables import checkpoints

        column = checkpoints.c[column_name]
        return conn.execute(select(column).distinct().limit(_MAX_VALUES)).scalars()

    return query


def _metric_names(conn: Any) -> Iterable[Any]:
    from sqlalchemy import select

    from ckpt_index.index.tables import checkpoint_metrics

    name = checkpoint_metrics.c.name
    return conn.execute(select(name).distinct().limit(_MAX_VALUES)).scalars()


def _with_direction(
    names: Iterable[str], incomplete: str, directions: tuple[str, ...]
) -> list[CompletionItem]:
    """``names`` starting with ``incomplete``; after ``NAME:``, the directions for NAME."""
    name, colon, _ = incomplete.rpartition(":")
    if colon and name in names:
        choices = [f"{name}:{d}" for d in directions]
    else:
        choices = list(names)
    return [CompletionItem(c) for c in choices if c.startswith(incomplete)]


def complete_metric(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """``--best-by``: the index's metric names and the canonical metrics (then ``:max|min``)."""
    names = dict.fromkeys([*CANONICAL_METRICS, *_index_values(ctx, _metric_names)])
    return _with_direction(list(names), incomplete, ("max", "min"))


def complete_sort_key(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """``--sort``: metric names and the usual fields (then ``:asc|desc``)."""
    names = dict.fromkeys([*CANONICAL_METRICS, *_SORT_FIELDS, *_index_values(ctx, _metric_names)])
    return _with_direction(list(names), incomplete, ("asc", "desc"))


def complete_encoder(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """``--encoder``: the encoders in the index."""
    values = _index_values(ctx, _distinct("encoder"))
    return [CompletionItem(v) for v in values if v.startswith(incomplete)]


def complete_exp(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """``--exp``: the experiment names in the index (a glob may still be typed by hand)."""
    values = _index_values(ctx, _distinct("exp_name"))
    return [CompletionItem(v) for v in values if v.startswith(incomplete)]


def complete_architecture(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """``--architecture``: the architectures in the index."""
    values = _index_values(ctx, _distinct("architecture"))
    return [CompletionItem(v) for v in values if v.startswith(incomplete)]
