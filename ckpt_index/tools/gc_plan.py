"""Planning a garbage collection: which indexed checkpoints under the given roots ``ckpt-index
gc`` would delete, and why each of the others is kept (issue 13).

A plan is made from the index (opened read-only: planning never writes, never creates the index)
and one ``lstat`` scan of each run folder (links, hard-link counts, newest change). Nothing is
deleted here: :func:`ckpt_index.tools.gc_apply.apply_gc` carries a plan out and re-checks every
item first. The never-delete classes (best K, link targets, ``best*``/``last*`` names, newest of
each run, pinned, active runs, unranked, other locations, files outside the roots) keep a
checkpoint whatever the policy says.
"""

from __future__ import annotations

import fnmatch
import gc
import json
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from operator import attrgetter
from pathlib import Path
from stat import S_ISREG
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import and_, or_, select

from ckpt_index.hyperparams import PREFIX as PARAMS_PREFIX
from ckpt_index.index.tables import checkpoint_metrics, checkpoints
from ckpt_index.sidecar.files import CKPT_SUFFIX, SIDECAR_SUFFIX
from ckpt_index.tools.gc_markers import GC_MARKER_SUFFIX, GC_SUFFIXES, NEW_SUFFIX, lock_marker
from ckpt_index.tools.gc_scan import DEV, INO, MTIME_NS, NLINK, SIZE, FolderScans, Scan
from ckpt_index.tools.rename_plan import KEPT_PREFIXES

if TYPE_CHECKING:
    from sqlalchemy import Connection

PathLike = str | os.PathLike[str]

_UNITS = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60}


def format_duration(seconds: float) -> str:
    """``604800`` -> ``7d``: the largest unit that divides it, for the reasons shown."""
    for unit, size in _UNITS.items():
        if seconds and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


#: Values of ``GcPolicy.per``: the groups checkpoints are ranked in.
PER_CHOICES = ("exp_name", "run", "none")
KEEP = "keep"
DELETE = "delete"


@dataclass(frozen=True)
class GcPolicy:
    """What to keep: the best ``keep_best`` by ``by`` in each group, and the rest of the rules."""

    keep_best: int
    by: str  # "val/hmean" or "val/hmean:max" / ":min"; default direction is the query's
    per: str = "exp_name"  # "exp_name" | "run" | "none"
    keep_last: int = 1  # the N newest of each run (the newest is always kept)
    keep_every_epochs: int | None = None  # keep epochs with (epoch + 1) % N == 0
    keep: tuple[str, ...] = ()  # globs on the path relative to its root or on the file name
    older_than: float | None = None  # seconds: only files older than this may be deleted
    include_active: bool = False
    include_unranked: bool = False
    active_window: float = 600.0  # seconds: a run folder changed within this is active

    def to_dict(self) -> dict[str, Any]:
        return {
            "keep_best": self.keep_best,
            "by": self.by,
            "per": self.per,
            "keep_last": self.keep_last,
            "keep_every_epochs": self.keep_every_epochs,
            "keep": list(self.keep),
            "older_than": self.older_than,
            "include_active": self.include_active,
            "include_unranked": self.include_unranked,
            "active_window": self.active_window,
        }


class GcItem(NamedTuple):
    """One indexed checkpoint under a root: kept or deleted, and every reason why.

    A named tuple (immutable, fields by name), not a dataclass: a plan makes one per indexed
    checkpoint, and a frozen dataclass's construction was a third of a plan's per-row time."""

    checkpoint_path: str  # absolute
    sidecar_path: str | None  # None when there is no sidecar file
    root: str  # the given root it lies under (absolute, resolved)
    group: str  # the exp_name / run folder / "" it was ranked in
    exp_name: str | None
    run: str  # the checkpoint's folder (absolute)
    epoch: int | None
    global_step: int | None
    value: float | None  # the metric's value; None: unranked
    size: int  # bytes this deletion frees (checkpoint + sidecar)
    action: str  # "keep" | "delete"
    reasons: tuple[str, ...]
    row_id: int
    # The files as the plan saw them, which apply_gc checks again (None: no such file). Plain
    # fields, not tuples: a plan holds 100,000 items, and the garbage collector walks each
    # object they hold once the plan is made.
    ckpt_dev: int | None
    ckpt_ino: int | None
    ckpt_size: int | None
    ckpt_mtime_ns: int | None
    sidecar_size: int | None
    sidecar_mtime_ns: int | None

    @property
    def ckpt_identity(self) -> tuple[int, int, int, int] | None:
        """(st_dev, st_ino, st_size, st_mtime_ns) of the checkpoint, or None (no file)."""
        if self.ckpt_dev is None:
            return None
        return (self.ckpt_dev, self.ckpt_ino, self.ckpt_size, self.ckpt_mtime_ns)  # type: ignore[return-value]

    @property
    def sidecar_identity(self) -> tuple[int, int] | None:
        """(st_size, st_mtime_ns) of the sidecar, or None (no sidecar file)."""
        if self.sidecar_size is None:
            return None
        return (self.sidecar_size, self.sidecar_mtime_ns)  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        """The fields up to ``row_id`` (the identities are apply_gc's business), by name."""
        data: dict[str, Any] = dict(zip(_ITEM_KEYS, self, strict=False))  # up to row_id
        data["reasons"] = list(self.reasons)
        return data


_ITEM_KEYS = GcItem._fields[: GcItem._fields.index("row_id") + 1]


@dataclass(frozen=True)
class GcPlan:
    """Every indexed checkpoint under the roots at this location, each kept or deleted."""

    policy: GcPolicy
    roots: tuple[str, ...]
    db_url: str
    location: str
    created_at: str  # ISO time
    items: tuple[GcItem, ...]
    #: Markers of deletions an interrupted ``gc --apply`` left in the run folders (the next
    #: apply finishes them first).
    interrupted: tuple[str, ...] = ()

    @property
    def deletions(self) -> tuple[GcItem, ...]:
        return tuple(item for item in self.items if item.action == DELETE)

    @property
    def kept(self) -> tuple[GcItem, ...]:
        return tuple(item for item in self.items if item.action == KEEP)

    @property
    def bytes_freed(self) -> int:
        return sum(item.size for item in self.deletions)

    def freed_by_group(self) -> dict[str, int]:
        """Bytes a deletion frees per experiment (``""`` for checkpoints without one)."""
        freed: dict[str, int] = {}
        for item in self.items:
            key = item.exp_name or ""
            freed[key] = freed.get(key, 0) + (item.size if item.action == DELETE else 0)
        return freed

    def to_dict(self) -> dict[str, Any]:
        deletions = self.deletions
        return {
            "policy": self.policy.to_dict(),
            "roots": list(self.roots),
            "location": self.location,
            "created_at": self.created_at,
            "items": [item.to_dict() for item in self.items],
            "interrupted": list(self.interrupted),
            "totals": {
                "checkpoints": len(self.items),
                "delete": len(deletions),
                "keep": len(self.items) - len(deletions),
                "bytes_freed": sum(item.size for item in deletions),
                "by_exp_name": self.freed_by_group(),
            },
        }


def plan_gc(
    roots: PathLike | Iterable[PathLike],
    policy: GcPolicy | None = None,
    *,
    db: PathLike | None = None,
    **policy_fields: Any,
) -> GcPlan:
    """The plan for ``roots`` under ``policy`` (or a policy of ``policy_fields``; given both,
    the fields replace the policy's).

    Reads the index read-only (a missing index raises, it is never created) and ``lstat``s each
    run folder once; writes nothing. Raises :class:`~ckpt_index.query.names.QueryError` for a
    metric the index does not know (with a suggestion) and ``ValueError`` for a bad policy.
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

    policy = _policy(policy, policy_fields)
    resolved = _resolved_roots(roots)
    url = resolve_db_url(db)
    location = resolve_location()
    guard = install_read_guard if is_sqlite(url) else None
    # The rows and the planner make a few objects per row and keep them all: the cyclic
    # collector would walk them (and every object the caller holds) again and again, a fifth of
    # the time at 100,000 rows (more in a process holding many objects), and could free none.
    # The run folders are scanned by a helper process while the rows are read and decided
    # (gc_scan says why), each folder as soon as a row names it; the index is closed once the
    # rows are read.
    with collector_paused(), _folder_scans() as scans:
        with disposing(open_engine(db, readonly=True, on_connect=guard)) as engine:
            with engine.connect() as conn:
                metric, direction = _metric(conn, policy.by)
                rows = _rows_under(conn, resolved, metric, location, scans.add)
            check_unlocked_read(engine)
        planner = _Planner(policy, direction, resolved, time.time(), scans)
        items = planner.plan(rows)
        interrupted = tuple(sorted(m for m in planner.pending if not _held(m)))
        # Freed before the collector runs again: its first pass walks every object made while
        # it was paused and still alive, and the rows and the planner's state are most of them.
        # The connection goes too, so that freeing it (psycopg allocates as it does) does not
        # start that pass here.
        del rows, planner, conn, engine
        return GcPlan(
            policy=policy,
            roots=tuple(resolved),
            db_url=_safe_url(url),
            location=location,
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            items=tuple(items),
            interrupted=interrupted,
        )


def _held(marker: str) -> bool:
    """Whether a live ``gc --apply`` holds ``marker`` (its deletion is in progress, not
    interrupted), or it is gone. Taking the lock and letting it go writes nothing."""
    fd = lock_marker(Path(marker))
    if fd is None:
        return True
    os.close(fd)
    return False


class collector_paused:  # noqa: N801 - used as a function, like contextlib's
    """The cyclic garbage collector paused (as it was before, after): for work that makes many
    objects and frees none of them, such as a plan of 100,000 items or its rendering, where the
    collector's passes over them cost more than the work itself and reclaim nothing.

    A class, not a generator: resuming the collector is the last thing it does (a generator's
    exit allocates after it, which would start the collector's pass over all those objects
    inside the paused work instead of at the caller's next allocation)."""

    def __enter__(self) -> None:
        self.collecting = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc: object) -> None:
        if self.collecting:
            gc.enable()


def _policy(policy: GcPolicy | None, fields: dict[str, Any]) -> GcPolicy:
    # Imported here: gc_config builds on this module's GcPolicy.
    from ckpt_index.tools.gc_config import validated_policy

    base = policy.__dict__ if policy is not None else {}
    return validated_policy({**base, **fields})


def _resolved_roots(roots: PathLike | Iterable[PathLike]) -> list[str]:
    """Each root resolved as sync resolves it (the index holds those paths), once each."""
    if isinstance(roots, (str, os.PathLike)):
        roots = [roots]
    resolved: list[str] = []
    for root in roots:
        path = os.path.realpath(os.fspath(root))
        if not os.path.isdir(path):
            raise NotADirectoryError(f"{os.fspath(root)}: not a directory")
        if path not in resolved:
            resolved.append(path)
    if not resolved:
        raise ValueError("gc needs at least one root")
    return resolved


def _safe_url(url: str) -> str:
    """The URL without its password (the plan is printed and written to JSON)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a URL SQLAlchemy cannot parse was opened anyway
        return url


def _metric(conn: Connection, by: str) -> tuple[tuple[str, str], str]:
    """(("column" | "metric", name), direction) of ``by``, its name checked as ``query
    --best-by`` checks it (unknown: an error with a suggestion)."""
    from ckpt_index.query.names import FIELDS, QueryError
    from ckpt_index.query.spec import QuerySpec, check_names, parse_direction

    names = check_names(conn, QuerySpec(best_by=by))
    name, direction = parse_direction(by)
    name = names.get(name, name)
    if name.startswith("metrics."):
        return ("metric", name[len("metrics.") :]), direction
    if name.startswith(PARAMS_PREFIX):
        raise QueryError(f"--by {by!r}: a hyperparameter ranks no checkpoint; use a metric")
    if name in FIELDS:
        if checkpoints.c[name].type.python_type not in (int, float):
            raise QueryError(f"--by {by!r}: {name} is no number; use a metric (e.g. hmean)")
        return ("column", name), direction
    return ("metric", name), direction


class _Row(NamedTuple):
    """The columns of a row as the planner reads it, in order. The rows are the driver's own
    tuples (a SQLAlchemy Row's attribute access costs ten times more, and even making these
    named tuples was a tenth of a plan's time at 100,000 rows); the planner reads them by
    position."""

    id: int
    checkpoint_path: str
    sidecar_path: str | None
    exp_name: str | None
    epoch: int | None
    global_step: int | None
    status: str
    checkpoint_exists: bool
    ckpt_size: int | None
    ckpt_mtime_ns: int | None
    sidecar_size: int | None
    sidecar_mtime_ns: int | None
    aliases: str | None
    is_last: bool | None
    pinned: bool | None
    value: float | None


def _rows_under(
    conn: Connection,
    roots: list[str],
    metric: tuple[str, str],
    location: str,
    on_folders: Callable[[list[str]], None] | None = None,
) -> list[tuple[Any, ...]]:
    """This location's rows below any root, with the metric's value: one statement, a range on
    the path index per root. ``on_folders`` is told the run folders of each batch of rows as
    they are read, each once, in the order of the rows."""
    from ckpt_index.index.store import path_range

    c = checkpoints.c
    kind, name = metric
    m = checkpoint_metrics.alias("m")
    value = c[name] if kind == "column" else m.c.value
    ranges = [
        and_(c.checkpoint_path >= lo, c.checkpoint_path < hi) for lo, hi in map(path_range, roots)
    ]
    columns = [c[field] for field in _Row._fields if field != "value"]
    stmt = select(*columns, value.label("value")).where(c.location == location, or_(*ranges))
    if kind == "metric":
        stmt = stmt.select_from(
            checkpoints.outerjoin(m, and_(m.c.checkpoint_id == c.id, m.c.name == name))
        )
    # Through the driver: the SQLAlchemy result's row objects and type processing cost as much
    # as SQLite's own reading of 100,000 rows, and the planner needs neither (booleans are only
    # tested for truth; SQLite's 0/1 do).
    compiled = stmt.compile(dialect=conn.dialect)
    params = compiled.params
    args = tuple(params[k] for k in compiled.positiontup or ()) if compiled.positional else params
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(str(compiled), args)
        if on_folders is None:
            return list(cursor.fetchall())
        rows: list[tuple[Any, ...]] = []
        seen: set[str] = set()
        while batch := cursor.fetchmany(_FETCH_BATCH):
            rows += batch
            folders = []
            for row in batch:
                folder = row[1].rpartition("/")[0]
                if folder not in seen:
                    seen.add(folder)
                    folders.append(folder)
            on_folders(folders)
        return rows
    finally:
        cursor.close()


_FETCH_BATCH = 2000  # rows per fetch: the scans of a batch's folders start while the next is read


#: Rows whose metrics are not trusted to rank: the sidecar was rejected, the file unreadable.
_UNRANKED_STATUSES = {"invalid": "sidecar invalid", "unreadable": "checkpoint unreadable"}
_SCOPES = {"exp_name": "in its experiment", "run": "in its run", "none": "under the roots"}
_PENDING = (GC_MARKER_SUFFIX, NEW_SUFFIX)  # what an interrupted apply leaves (gc_markers)
_NO_EXP = "in its run (no experiment name)"  # per exp_name, the scope of a row without one


class _Folder:
    """A run folder as one scan saw it (:func:`~ckpt_index.tools.gc_scan.scan_folder`: ``lstat``,
    links looked at, not followed out; a link's target stat'ed only to know which file it
    names)."""

    __slots__ = ("files", "others", "sidecars", "links", "newest_ns", "error", "ignored")

    def __init__(self, scan: Scan) -> None:
        files, others, sidecars, links, newest_ns, error, ignored = scan
        self.files = files  # regular files by name: (st_dev, st_ino, st_size, st_mtime_ns, nlink)
        self.others = set(others)  # names that are no regular file
        self.sidecars = set(sidecars)  # *.metadata.yaml names (not stat'ed)
        self.links: dict[tuple[int, int], list[str]] = {}  # target (st_dev, st_ino) -> names
        for dev, ino, name in links:
            self.links.setdefault((dev, ino), []).append(name)
        self.newest_ns = newest_ns  # the newest change of the folder's entries
        self.error = error
        self.ignored = ignored  # gc's own files


_TRAINING_SUFFIXES = (CKPT_SUFFIX, SIDECAR_SUFFIX)


def _folder_scans(child: bool = True) -> FolderScans:
    """The scans of one plan (gc's own files are no sign of training, nor are sidecars)."""
    return FolderScans(SIDECAR_SUFFIX, _TRAINING_SUFFIXES, GC_SUFFIXES, child=child)


# The planner's state of one row while it decides: a list indexed by these (a list per row,
# not an object: the planner handles every indexed checkpoint, and an object's construction and
# attribute access cost several times a list's at 100,000 rows).
_ROW, _NAME, _ST, _SID, _VALUE, _KEEP, _NOTES, _BEST, _NOT_BEST, _KEPT_NAME = range(10)
_GROUP, _ROOT, _RUN, _SIDECAR, _INDEX = range(10, 15)

_GONE = "file is gone (nothing to free)"
_NOT_REGULAR = "not a regular file"
_CHANGED = "changed since the last sync (run ckpt-index sync)"
_KEPT_NAME_REASON = "a best/last file"
_PINNED = "pinned"
_CKPT_LEN = len(CKPT_SUFFIX)


class _Planner:
    """Decides every row in one pass per row (local variables, reasons as plain strings), then
    ranks each group and finds the newest files of each run."""

    def __init__(
        self,
        policy: GcPolicy,
        direction: str,
        roots: list[str],
        now: float,
        scans: FolderScans | None = None,
    ) -> None:
        self.scans = scans or _folder_scans(child=False)  # without: scanned here
        self.policy = policy
        self.direction = direction
        self.roots = roots
        self.now = now
        self.metric = _bare_name(policy.by)
        self.folders: dict[str, _Folder] = {}
        self.active: dict[str, int] = {}  # run -> newest change (ns)
        self.alone: dict[str, tuple[str]] = {}  # see _item
        self.pending: list[str] = []  # markers of interrupted deletions in the run folders

    def plan(self, rows: Iterable[Any]) -> list[GcItem]:
        runs: dict[str, list[list[Any]]] = {}
        groups: dict[str, list[list[Any]]] = {}
        # Each row's item is made as soon as the row is decided (while the helper may still be
        # scanning later folders), as if it were neither among the best nor the newest; the
        # few rows ranking and the newest-of-run rule then change are made again.
        items: list[GcItem] = []
        self._decide(rows, runs, groups, items)
        changed: list[list[Any]] = []
        # Ranks first: the reasons read best first, as a person asks "why is it kept?".
        for members in groups.values():
            self._rank(members, changed)
        for members in runs.values():
            self._newest(members, changed)
        for state in changed:
            items[state[_INDEX]] = _item(state, self.alone)
        # By root as given, then by path (code points: the bytewise order of UTF-8).
        items.sort(key=attrgetter("checkpoint_path"))
        if len(self.roots) > 1:
            order = {root: i for i, root in enumerate(self.roots)}
            items.sort(key=lambda item: order[item.root])  # stable: paths stay in order
        return items

    # -- per row -------------------------------------------------------------------------------
    def _decide(
        self,
        rows: Iterable[Any],
        runs: dict[str, list[list[Any]]],
        groups: dict[str, list[list[Any]]],
        items: list[GcItem],
    ) -> None:
        """The reasons of each row that need no other row: the never-delete classes, then the
        policy's globs, epochs and age (in the order a person reads them)."""
        policy = self.policy
        per, globs, every = policy.per, policy.keep, policy.keep_every_epochs
        older_than, include_active = policy.older_than, policy.include_active
        include_unranked, no_metric = policy.include_unranked, f"unranked (no {self.metric})"
        limit = format_duration(older_than) if older_than is not None else ""
        newer, older = f"newer than {limit}", f"older than {limit}"
        now, single_root = self.now, self.roots[0] if len(self.roots) == 1 else None
        kept_prefixes = KEPT_PREFIXES
        # A ranked row that is not among the best (most of them) says so; the best are made
        # again once ranked. The scope is the group's: a row without an experiment name is
        # ranked in its run.
        not_best = f"not among the best {policy.keep_best} by {self.metric} {_SCOPES[per]}"
        not_best_in_run = f"not among the best {policy.keep_best} by {self.metric} {_NO_EXP}"
        alone, add_item = self.alone, items.append
        # Per run folder: (folder, its active reason or None, its members).
        seen: dict[str, tuple[_Folder, str | None, list[list[Any]]]] = {}
        for row in rows:
            (
                _,
                path,
                sidecar_path,
                exp_name,
                epoch,
                _,
                status,
                exists,
                ckpt_size,
                ckpt_mtime_ns,
                sidecar_size,
                sidecar_mtime_ns,
                aliases,
                _,
                pinned,
                raw_value,
            ) = row
            run, _, name = path.rpartition("/")
            known = seen.get(run)
            if known is None:
                folder = self._folder(run)
                ago = now - self.active[run] / 1e9
                active = (
                    f"run is active (changed {_ago(ago)})" if ago < policy.active_window else None
                )
                members: list[list[Any]] = []
                runs[run] = members
                known = seen[run] = (folder, active, members)
            folder, active, members = known
            root = single_root or self._root_of(path)
            keep: list[str] = []
            notes: list[str] = []
            st = folder.files.get(name)
            # The sidecar as sidecar_path_for names it.
            stem = name[:-_CKPT_LEN] if name.endswith(CKPT_SUFFIX) else name
            sidecar_name = stem + SIDECAR_SUFFIX
            sidecar_file = f"{run}/{sidecar_name}"
            sid: tuple[int, int] | None = None
            if sidecar_name in folder.sidecars:
                if (
                    sidecar_size is not None
                    and sidecar_mtime_ns is not None
                    and sidecar_path == sidecar_file
                ):
                    sid = (sidecar_size, sidecar_mtime_ns)
                else:
                    sid = _lstat_identity(sidecar_file)
            sidecar = sidecar_file if sid is not None else None
            if folder.error is not None:
                keep.append(f"its folder cannot be read ({folder.error})")
            elif st is None:
                keep.append(_NOT_REGULAR if name in folder.others else _GONE)
            if st is not None:
                # The files are as the index last saw them (else its facts, a pin included,
                # may be old). A file changed within sync's racy window is stored without an
                # mtime (the next sync reads it again): its size must still match.
                if not (
                    exists
                    and ckpt_size == st[SIZE]
                    and (ckpt_mtime_ns is None or ckpt_mtime_ns == st[MTIME_NS])
                    and (
                        sidecar_size is None
                        if sid is None
                        else sidecar_size == sid[0]
                        and (sidecar_mtime_ns is None or sidecar_mtime_ns == sid[1])
                    )
                ):
                    keep.append(_CHANGED)
                links = folder.links.get((st[DEV], st[INO])) if folder.links else None
            else:
                links = None
            if links or aliases:
                names = {*(links or ()), *_alias_names(aliases, run, root)}
                keep.append("target of " + ", ".join(sorted(names)))
            if st is not None and st[NLINK] > 1:
                others = st[NLINK] - 1
                keep.append(f"has {others} other hard link{'s' if others > 1 else ''}")
            kept_name = name.lower().startswith(kept_prefixes)
            if kept_name:
                keep.append(_KEPT_NAME_REASON)
            if pinned:
                keep.append(_PINNED)
            if active is not None:
                (notes if include_active else keep).append(active)
            unranked = _UNRANKED_STATUSES.get(status)
            value = None if unranked else raw_value
            if value is None:
                why = f"unranked ({unranked})" if unranked else no_metric
                (notes if include_unranked else keep).append(why)
            # The policy's rules (globs, every N epochs, age).
            if globs:
                rel = path[len(root.rstrip("/")) + 1 :]
                for pattern in globs:
                    if fnmatch.fnmatchcase(rel, pattern) or fnmatch.fnmatchcase(name, pattern):
                        keep.append(f"matches --keep {pattern!r}")
            if every is not None and epoch is not None and (epoch + 1) % every == 0:
                keep.append(f"epoch {epoch}: one of every {every} epochs")
            if older_than is not None and st is not None:
                if now - st[MTIME_NS] / 1e9 < older_than:
                    keep.append(newer)
                else:
                    notes.append(older)
            if per == "none":
                group = ""
            elif per == "exp_name" and exp_name:
                group = exp_name
            else:
                group = run  # per run, or a checkpoint of no known experiment: its run
            state = [row, name, st, sid, value, keep, notes, None, None, kept_name, group, root]
            state += (run, sidecar, len(items))
            members.append(state)
            if st is not None and value is not None:
                state[_NOT_BEST] = (
                    not_best_in_run if per == "exp_name" and not exp_name else not_best
                )
                ranked = groups.get(group)
                if ranked is None:
                    groups[group] = [state]
                else:
                    ranked.append(state)
            add_item(_item(state, alone))

    def _root_of(self, path: str) -> str:
        """The deepest root ``path`` lies under (roots may nest)."""
        return max((r for r in self.roots if path.startswith(r.rstrip("/") + "/")), key=len)

    def _folder(self, run: str) -> _Folder:
        folder = self.folders.get(run)
        if folder is None:
            folder = self.folders[run] = _Folder(self.scans.get(run))
            self.active[run] = folder.newest_ns
            if folder.ignored:
                self.pending += (f"{run}/{n}" for n in folder.ignored if n.endswith(_PENDING))
        return folder

    # -- per group and run ------------------------------------------------------------------------
    def _rank(self, members: list[list[Any]], changed: list[list[Any]]) -> None:
        """The best ``keep_best`` of a group (ties as ``query --best-by``: the higher epoch, the
        higher step, a ``last`` copy after its original, then the path)."""
        sign = -1.0 if self.direction == "max" else 1.0
        k = self.policy.keep_best
        # Only the files whose value reaches the k-th best can be among the best: the full
        # tie-breaking key is built for those alone (a NaN, unordered, sorts them all).
        values = sorted([sign * state[_VALUE] for state in members])
        if any(map(math.isnan, values)):
            candidates = members
        else:
            bound = values[min(k, len(values)) - 1]
            candidates = [state for state in members if sign * state[_VALUE] <= bound]
        candidates.sort(
            key=lambda s: (
                sign * s[_VALUE],
                s[_ROW][4] is None,
                -(s[_ROW][4] or 0),
                s[_ROW][5] is None,
                -(s[_ROW][5] or 0),
                bool(s[_ROW][13]),
                s[_ROW][1],
            )
        )
        best = candidates[:k]
        scope = _NO_EXP if self.policy.per == "exp_name" and not best[0][_ROW][3] else None
        scope = scope or _SCOPES[self.policy.per]
        for position, state in enumerate(best, 1):
            state[_BEST] = f"best {k} by {self.metric} {scope} (#{position})"
            changed.append(state)

    def _newest(self, members: list[list[Any]], changed: list[list[Any]]) -> None:
        """The ``keep_last`` newest files of a run (by step, epoch, then change), and the one
        changed last."""
        present = [s for s in members if s[_ST] is not None]
        if not present:
            return

        # A best*/last* file is kept by its name; the newest of the others is the run's own
        # newest epoch file (what a last.ckpt copy was saved from), kept too.
        def newest_key(s: list[Any]) -> tuple[Any, ...]:
            row = s[_ROW]
            return (
                not s[_KEPT_NAME],
                row[5] if row[5] is not None else -1,
                row[4] if row[4] is not None else -1,
                s[_ST][MTIME_NS],
                row[1],
            )

        last = max(1, self.policy.keep_last)
        if last == 1:
            first = max(present, key=newest_key)  # paths differ: no two keys are equal
            ordered = [first]
        else:
            ordered = sorted(present, key=newest_key, reverse=True)
            first = ordered[0]
        for position, state in enumerate(ordered[:last]):
            state[_KEEP].append(
                "newest of its run" if position == 0 else f"among the {last} newest of its run"
            )
            changed.append(state)
        # The most recently changed: the first such in the order above.
        latest_ns = max(s[_ST][MTIME_NS] for s in present)
        if first[_ST][MTIME_NS] != latest_ns:
            latest = max((s for s in present if s[_ST][MTIME_NS] == latest_ns), key=newest_key)
            latest[_KEEP].append("most recently changed of its run")
            changed.append(latest)


_make_item = GcItem._make  # the fields in their order, without keyword handling


def _item(state: list[Any], alone: dict[str, tuple[str]]) -> GcItem:
    """The item of a decided row, with the reasons in the order a person reads them (``alone``:
    the one-reason tuples of deletions, one per reason for all of them)."""
    row, st, sid = state[_ROW], state[_ST], state[_SID]
    keep, best = state[_KEEP], state[_BEST]
    if not keep and best is None and st is not None:
        action, not_best, notes = DELETE, state[_NOT_BEST], state[_NOTES]
        if not_best is None:
            reasons = tuple(notes)
        elif notes:
            reasons = (not_best, *notes)
        else:
            reasons = alone.get(not_best) or alone.setdefault(not_best, (not_best,))
    else:
        action = KEEP
        reasons = (best, *keep) if best is not None else tuple(keep)
    if st is not None:
        dev, ino, ckpt_size, ckpt_mtime_ns, _ = st
    else:
        dev = ino = ckpt_size = ckpt_mtime_ns = None
    if sid is not None:
        sidecar_size, sidecar_mtime_ns = sid
    else:
        sidecar_size = sidecar_mtime_ns = None
    return _make_item(
        (
            row[1],  # checkpoint_path
            state[_SIDECAR],
            state[_ROOT],
            state[_GROUP],
            row[3],  # exp_name
            state[_RUN],
            row[4],  # epoch
            row[5],  # global_step
            state[_VALUE],
            (ckpt_size or 0) + (sidecar_size or 0),  # size: what deleting it frees
            action,
            reasons,
            row[0],  # row_id
            dev,
            ino,
            ckpt_size,
            ckpt_mtime_ns,
            sidecar_size,
            sidecar_mtime_ns,
        )
    )


def _lstat_identity(path: str) -> tuple[int, int] | None:
    """(size, mtime_ns) of a regular file, else ``None``."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns) if S_ISREG(st.st_mode) else None


def _alias_names(aliases: str | None, run: str, root: str) -> list[str]:
    """The links the index knows to a file of ``run``, named relative to its folder or root."""
    if not aliases:
        return []
    try:
        paths = json.loads(aliases)
    except ValueError:
        return ["a link (aliases unreadable)"]
    names = []
    for path in paths if isinstance(paths, list) else []:
        if not isinstance(path, str):
            continue
        if os.path.dirname(path) == run:
            names.append(os.path.basename(path))
        elif path.startswith(root.rstrip("/") + "/"):
            names.append(os.path.relpath(path, root))
        else:
            names.append(path)
    return names


def _bare_name(by: str) -> str:
    name, sep, direction = by.rpartition(":")
    return name if sep and name and direction.lower() in ("max", "min", "asc", "desc") else by


def _ago(seconds: float) -> str:
    if seconds < 0:
        return "in the future"
    if seconds < 90:
        return f"{int(seconds)} s ago"
    return f"{int(seconds // 60)} min ago"
