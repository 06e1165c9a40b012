"""``ckpt-index du``: the disk the indexed checkpoints use, per experiment, encoder, phase, status
or run folder, largest first.

Answered from the index in one GROUP BY (never from a walk of the tree, and never writing: a
missing index is an error, not a new file). Counted: this location's rows whose checkpoint file
exists, under the roots when given (the path range a sync selects its rows by); a checkpoint's
bytes are its file's and its sidecar's, as of the last sync. A link is not counted again: one
checkpoint, one row.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ckpt_index.query.table import human_size

if TYPE_CHECKING:
    from sqlalchemy import Connection
    from sqlalchemy.sql import ColumnElement

PathLike = str | os.PathLike[str]

#: What ``--by`` groups by: a column of the row, or ``run`` (the checkpoint's folder).
BY_CHOICES = ("exp_name", "encoder", "phase", "status", "run")


@dataclass(frozen=True)
class UsageGroup:
    """The checkpoints of one group: how many, and their bytes."""

    group: str | None  # the exp_name, encoder, ... (None: the field is unknown); run: a folder
    count: int
    checkpoint_bytes: int
    sidecar_bytes: int

    @property
    def bytes(self) -> int:
        return self.checkpoint_bytes + self.sidecar_bytes

    @property
    def size(self) -> str:
        """``bytes`` for a person: ``1.5G`` (powers of 1024, as ``ls -lh`` and the query table)."""
        return human_size(self.bytes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "count": self.count,
            "bytes": self.bytes,
            "size": self.size,
            "checkpoint_bytes": self.checkpoint_bytes,
            "sidecar_bytes": self.sidecar_bytes,
        }


@dataclass(frozen=True)
class DiskUsage:
    """Disk used per group, largest first, and the total."""

    by: str
    roots: tuple[str, ...]  # resolved; () means the whole index (of this location)
    location: str
    groups: tuple[UsageGroup, ...]

    @property
    def total(self) -> UsageGroup:
        return UsageGroup(
            None,
            sum(g.count for g in self.groups),
            sum(g.checkpoint_bytes for g in self.groups),
            sum(g.sidecar_bytes for g in self.groups),
        )

    def to_dict(self) -> dict[str, Any]:
        total = self.total.to_dict()
        del total["group"]
        return {
            "by": self.by,
            "roots": list(self.roots),
            "location": self.location,
            "groups": [g.to_dict() for g in self.groups],
            "total": total,
        }


def disk_usage(
    roots: PathLike | Iterable[PathLike] | None = None,
    by: str = "exp_name",
    db: PathLike | None = None,
    *,
    location: str | None = None,
) -> DiskUsage:
    """Disk used by the indexed checkpoints per ``by`` group (one of :data:`BY_CHOICES`).

    ``roots``: only checkpoints below these directories (resolved as ``sync`` resolves them);
    None: every checkpoint of this location. Raises ``ValueError`` for an unknown ``by``, and
    :class:`~ckpt_index.index.engine.IndexMissingError` when there is no index (none is made).
    """
    from ckpt_index.index.engine import (
        check_unlocked_read,
        disposing,
        is_sqlite,
        open_engine,
        resolve_db_url,
        resolve_location,
    )
    from ckpt_index.index.readonly import install_read_guard

    if by not in BY_CHOICES:
        raise ValueError(f"--by takes one of {', '.join(BY_CHOICES)}, not {by!r}")
    if isinstance(roots, (str, os.PathLike)):
        roots = [roots]
    resolved = tuple(dict.fromkeys(os.path.realpath(os.fspath(r)) for r in roots or ()))
    location = resolve_location(location)
    url = resolve_db_url(db)
    guard = install_read_guard if is_sqlite(url) else None
    with disposing(open_engine(url, readonly=True, on_connect=guard)) as engine:
        with engine.connect() as conn:
            groups = usage_groups(conn, by, resolved, location)
        check_unlocked_read(engine)
    return DiskUsage(by, resolved, location, tuple(groups))


def usage_groups(
    conn: Connection, by: str, roots: tuple[str, ...], location: str
) -> list[UsageGroup]:
    """The groups of :func:`disk_usage` on an open connection, largest first: one GROUP BY."""
    from sqlalchemy import and_, func, literal_column, or_, select

    from ckpt_index.index.store import path_range
    from ckpt_index.index.tables import checkpoints

    c = checkpoints.c
    key = _run_folder(conn) if by == "run" else c["training_phase" if by == "phase" else by]
    conditions = [c.location == location, c.checkpoint_exists.is_(True)]
    if roots:
        ranges = [path_range(root) for root in roots]
        conditions.append(
            or_(*(and_(c.checkpoint_path >= lo, c.checkpoint_path < hi) for lo, hi in ranges))
        )
    stmt = (
        select(
            key.label("usage_group"),
            func.count(),
            func.sum(func.coalesce(c.ckpt_size, 0)),
            func.sum(func.coalesce(c.sidecar_size, 0)),
        )
        .where(*conditions)
        # By the label: PostgreSQL would take the key's bound constants in GROUP BY for a
        # different expression than in SELECT.
        .group_by(literal_column("usage_group"))
    )
    groups = [
        UsageGroup(_shown(by, group), int(count), int(ckpt or 0), int(sidecar or 0))
        for group, count, ckpt, sidecar in conn.execute(stmt)
    ]
    groups.sort(key=lambda g: (-g.bytes, -g.count, g.group is None, g.group or ""))
    return groups


#: The SQL function (SQLite) that gives a path's folder.
_FOLDER_FUNCTION = "ckpt_index_folder"


def _folder(path: str | None) -> str | None:
    return None if path is None else path[: path.rfind("/")]


def _run_folder(conn: Connection) -> ColumnElement[Any]:
    """The folder of ``checkpoint_path`` (without its final '/') as a SQL expression.

    SQLite has no function that finds the last '/' of a string, and the expressions that
    emulate one (``rtrim`` by the name's characters) cost a second at 100,000 rows; fetching
    the paths to group them here costs half of that. A small deterministic Python function is
    registered on the connection instead, and the GROUP BY stays in SQLite. PostgreSQL finds
    the last '/' in the reversed path.
    """
    from sqlalchemy import func

    from ckpt_index.index.tables import checkpoints

    path = checkpoints.c.checkpoint_path
    if conn.dialect.name == "sqlite":
        from ckpt_index.index.engine import driver_connection

        driver_connection(conn).create_function(_FOLDER_FUNCTION, 1, _folder, deterministic=True)
        return getattr(func, _FOLDER_FUNCTION)(path)
    # Up to the last '/': found as the first one of the reversed path (half a regex's cost).
    return func.left(path, func.length(path) - func.strpos(func.reverse(path), "/"))


def _shown(by: str, group: str | None) -> str | None:
    if by == "run" and group == "":
        return "/"
    return group
