"""Carrying out a garbage-collection plan (``ckpt-index gc --apply``), one checkpoint at a time.

:func:`apply_gc` takes a :class:`~ckpt_index.tools.gc_plan.GcPlan` and, for each deletion,
re-checks it against the disk and the index as they are now; any doubt keeps the checkpoint and
is reported as a skip with a one-line reason. A deletion that passes goes in this order:

1. a *marker* ``.NAME.ckpt.ckpt-index-gc`` is written beside the checkpoint (JSON: what is being
   removed, the identities seen when re-checked, and where ``--trash`` puts it), and fsynced;
2. the checkpoint is removed (unlinked, or moved into the trash);
3. its sidecar is removed the same way;
4. its index row is deleted (its metrics cascade; a parameter set no row uses any more is swept
   as sync sweeps it);
5. the marker is removed.

Killed between any two steps, the files on disk are a state a ``sync`` indexes like any other
(at worst an orphan sidecar, which queries hide and sync flags), and nothing the plan kept was
touched. The marker (:mod:`ckpt_index.tools.gc_markers`) is how the next ``gc --apply``
recognises what an interrupted one left: before its own deletions it finds the markers in the
run folders of its plan and finishes each (the sidecar, if it is still the one the marker names,
then the row); a move into the trash killed after the file was whole there is finished too,
one killed earlier is undone (the checkpoint is still in place, and planned again).
A marker is never trusted to name paths: the files it may act on are the checkpoint beside it
and that checkpoint's sidecar, and a trash destination it names must lie in the trash given now.
``--trash DIR`` moves instead of deleting (:mod:`ckpt_index.tools.gc_trash`).
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckpt_index.sidecar.files import (
    MAX_SIDECAR_BYTES,
    SIDECAR_SUFFIX,
    SidecarError,
    parse_sidecar_bytes,
    sidecar_path_for,
)
from ckpt_index.tools.gc_markers import (
    GC_MARKER_SUFFIX,
    NEW_SUFFIX,
    checkpoint_of_marker,
    drop_unnamed_marker,
    is_gc_file,
    lock_marker,
    marker_path_for,
    pending_markers,
    read_marker,
    write_marker,
)
from ckpt_index.tools.gc_trash import (
    COPY_SUFFIX,
    TRASH_MANIFEST,
    TrashError,
    check_trash,
    free_name,
    free_trash_name,
    log_trash,
    remove_file,
    trash_path,
    under,
)
from ckpt_index.tools.rename_plan import is_kept_name

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

    from ckpt_index.tools.gc_plan import GcItem, GcPlan

__all__ = [
    "GC_MARKER_SUFFIX",
    "TRASH_MANIFEST",
    "GcResult",
    "TrashError",
    "apply_gc",
    "check_trash",
    "is_gc_file",
    "marker_path_for",
    "pending_markers",
]


Progress = Callable[["GcItem", str], None]


@dataclass
class GcResult:
    """What :func:`apply_gc` did: checkpoints removed, deletions skipped (and why), bytes freed.

    ``finished`` lists the checkpoints whose deletion an earlier, interrupted apply had started
    and this one completed (their sidecar and row); they are not counted in ``bytes_freed``.
    """

    deleted: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    bytes_freed: int = 0
    trashed_to: str | None = None
    finished: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "deleted": list(self.deleted),
            "skipped": [{"path": path, "reason": reason} for path, reason in self.skipped],
            "bytes_freed": self.bytes_freed,
            "trashed_to": self.trashed_to,
            "finished": list(self.finished),
        }


class _Skip(Exception):
    """A re-check failed: the checkpoint is kept; ``str()`` is the one-line reason."""


# --------------------------------------------------------------------------------------------
# Re-checks


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _sidecar_pinned(sidecar: Path) -> bool:
    """Whether the sidecar says ``pinned: true`` now (read bounded, parsed safely)."""
    from ckpt_index.safe_io import read_bounded

    data = read_bounded(sidecar, MAX_SIDECAR_BYTES, what="sidecar")
    document = parse_sidecar_bytes(data, sidecar)
    if not isinstance(document, dict):
        return False
    # Parsed, not validated: an invalid sidecar (unranked, deleted with --include-unranked)
    # still says whether it is pinned. Any spelling that is not clearly "no" counts as pinned.
    value = document.get("pinned")
    return value is not None and str(value).strip().lower() not in _NOT_PINNED


_NOT_PINNED = ("false", "no", "off", "0", "")


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{max(0, int(seconds))} s ago"
    if seconds < 7200:
        return f"{int(seconds // 60)} min ago"
    return f"{seconds / 3600:.1f} h ago"


#: A run folder's scan is reused for its next checkpoints for at most this long (seconds), and
#: only while the folder's mtime is the one gc's own deletion left (anything created, removed or
#: renamed there by someone else changes it): one scan per run, not one per checkpoint, so a run
#: of thousands of checkpoints costs thousands of lstat calls, not millions. A change within the
#: same clock tick as gc's own (a few ms) is seen at the next rescan, this long after at most.
RESCAN_AFTER_S = 5.0


@dataclass
class _Scan:
    """What one scan of a folder found: link targets, the newest entry, and when."""

    links: dict[str, str]  # realpath of a link's target -> the link's name
    newest: tuple[float, str] | None  # (mtime, name) of the newest entry, gc's own files aside
    mtime_ns: int  # the folder's mtime then (or after gc's own change in it)
    at: float


class _Runs:
    """The scans of the run folders (and of the folders above ``checkpoints`` folders) of one
    apply, each reused while nothing but gc changed its folder."""

    def __init__(self) -> None:
        self.scans: dict[str, _Scan] = {}

    def scan(self, folder: str, skip: str | None = None) -> _Scan:
        mtime_ns = os.lstat(folder).st_mtime_ns
        now = time.monotonic()
        cached = self.scans.get(folder)
        if cached is not None and cached.mtime_ns == mtime_ns and now - cached.at < RESCAN_AFTER_S:
            return cached
        links: dict[str, str] = {}
        newest: tuple[float, str] | None = None
        with os.scandir(folder) as entries:
            for entry in entries:
                if is_gc_file(entry.name) or entry.path == skip:
                    continue
                try:
                    if entry.is_symlink():
                        links.setdefault(os.path.realpath(entry.path), entry.name)
                    elif entry.name.endswith(SIDECAR_SUFFIX):
                        continue  # as the planner sees a run: a sidecar is no sign of training
                    changed = entry.stat(follow_symlinks=False).st_mtime
                except FileNotFoundError:
                    continue
                if newest is None or changed > newest[0]:
                    newest = (changed, entry.name)
        scan = self.scans[folder] = _Scan(links, newest, mtime_ns, now)
        return scan

    def changed_by_gc(self, folder: str) -> None:
        """gc removed a file from ``folder``: its new mtime is no sign of anyone else."""
        cached = self.scans.get(folder)
        if cached is not None:
            with suppress(OSError):
                cached.mtime_ns = os.lstat(folder).st_mtime_ns


def _check_run(item: GcItem, window: float | None, runs: _Runs) -> None:
    """Skip when a link in the run folder points at the checkpoint, or (``window``) the run is
    active: an entry of its folder changed within ``window`` seconds, as the planner sees it
    (gc's own markers and the folder's own mtime, which gc's deletions set, are no change; for a
    ``checkpoints`` folder, the run folder above it and its other entries count too)."""
    scan = runs.scan(item.run)
    name = scan.links.get(os.path.realpath(item.checkpoint_path))
    if name is not None:
        raise _Skip(f"the target of the link {name}")
    if window is None:
        return
    _check_age(scan.newest, window)
    if os.path.basename(item.run) == "checkpoints":
        parent = os.path.dirname(item.run)
        _check_age((os.lstat(parent).st_mtime, os.path.basename(parent)), window)
        _check_age(runs.scan(parent, skip=item.run).newest, window)


def _check_age(newest: tuple[float, str] | None, window: float) -> None:
    if newest is None:
        return
    age = time.time() - newest[0]
    if age < window:
        raise _Skip(f"run is active ({newest[1]} changed {_ago(age)})")


def _recheck(item: GcItem, plan: GcPlan, row: Any, runs: _Runs) -> tuple[int, int] | None:
    """Raise :class:`_Skip` unless ``item`` may still go; return its sidecar's identity now."""
    path = item.checkpoint_path
    if is_kept_name(os.path.basename(path)):
        raise _Skip("a best*/last* name")
    root = os.path.realpath(item.root)
    if not under(os.path.realpath(os.path.dirname(path)), root):
        raise _Skip(f"no longer under its root {item.root}")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise _Skip("gone since the plan (run sync to update the index)") from None
    if not stat.S_ISREG(st.st_mode):
        raise _Skip("no longer a regular file")
    if item.ckpt_identity is None or _identity(st) != tuple(item.ckpt_identity):
        raise _Skip("replaced or modified since the plan")
    if st.st_nlink > 1:
        raise _Skip(f"has {st.st_nlink - 1} other hard link(s) now")
    if row is None:
        raise _Skip("no longer in the index (run sync)")
    if row.pinned:
        raise _Skip("pinned (in the index)")
    if row.aliases and json.loads(row.aliases):
        raise _Skip("the target of a link or alias (in the index)")
    sidecar = Path(item.sidecar_path) if item.sidecar_path else sidecar_path_for(path)
    try:
        sst = os.lstat(sidecar)
    except FileNotFoundError:
        sst = None
    sidecar_now = None if sst is None else (sst.st_size, sst.st_mtime_ns)
    planned = None if item.sidecar_identity is None else tuple(item.sidecar_identity)
    if sidecar_now != planned:
        raise _Skip(
            "a sidecar appeared since the plan"
            if planned is None
            else "its sidecar was removed since the plan"
            if sidecar_now is None
            else "its sidecar changed since the plan"
        )
    if sst is not None:
        try:
            if _sidecar_pinned(sidecar):
                raise _Skip("pinned (in its sidecar)")
        except (OSError, SidecarError) as exc:
            raise _Skip(f"its sidecar cannot be read ({_one_line(exc)})") from None
    window = None if plan.policy.include_active else plan.policy.active_window
    _check_run(item, window, runs)
    return sidecar_now


def _one_line(exc: BaseException) -> str:
    text = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
    return " ".join(str(text).split())


# --------------------------------------------------------------------------------------------
# The index


def _current_row(engine: Engine, location: str, path: str) -> Any:
    from sqlalchemy import select

    from ckpt_index.index.tables import checkpoints

    c = checkpoints.c
    with engine.connect() as conn:
        row = conn.execute(
            select(c.id, c.pinned, c.aliases).where(
                c.location == location, c.checkpoint_path == path
            )
        ).first()
        conn.rollback()
    return row


def _delete_row(engine: Engine, location: str, path: str) -> None:
    """Delete the row of ``path`` at ``location`` (metrics cascade, unused parameter sets go)."""
    from ckpt_index.index.engine import run_write
    from ckpt_index.index.store import delete_paths

    def work(conn: Connection) -> None:
        delete_paths(conn, [path], location=location)

    run_write(engine, work)


def _index_url(plan: GcPlan, db: str | os.PathLike[str] | None) -> str:
    """The index to write: ``db``, or the plan's (whose password is hidden: the default index
    is found again the way the plan found it)."""
    from sqlalchemy.engine import make_url

    from ckpt_index.index.engine import resolve_db_url

    if db is not None:
        return resolve_db_url(db)
    ambient = resolve_db_url(None)
    try:
        if make_url(ambient).render_as_string(hide_password=True) == plan.db_url:
            return ambient
        hidden = make_url(plan.db_url).password == "***"
    except Exception:  # noqa: BLE001 - a URL SQLAlchemy cannot parse: open_engine says why
        return plan.db_url
    if hidden:
        raise ValueError(
            "the plan shows its index URL without the password: pass the URL again "
            "(apply_gc(plan, db=URL))"
        )
    return plan.db_url


@contextmanager
def _engine(url: str) -> Iterator[Engine]:
    from ckpt_index.index.engine import disposing, open_engine

    with disposing(open_engine(url)) as engine:
        yield engine


# --------------------------------------------------------------------------------------------
# Applying


def apply_gc(
    plan: GcPlan,
    *,
    trash: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    db: str | os.PathLike[str] | None = None,
) -> GcResult:
    """Carry out ``plan``'s deletions (see the module docstring for the order and re-checks).

    ``db`` is the index, by default the plan's: a plan shows its URL without the password, so a
    URL with one must be given again here (the default index ``$CKPT_INDEX_DB`` is found again).

    ``trash`` moves the files there instead of deleting them (:class:`TrashError` when it lies
    inside a root or holds one). ``progress(item, outcome)`` is called once per deletion with a
    one-line outcome: ``"deleted"``, ``"trashed to PATH"`` or ``"skipped: REASON"``. Interrupted
    deletions of an earlier apply are finished first (``GcResult.finished``).
    """
    from ckpt_index.index.engine import resolve_location

    trash_dir = check_trash(trash, plan.roots) if trash is not None else None
    result = GcResult(trashed_to=trash_dir)
    here = resolve_location()
    if plan.location != here:
        for item in plan.deletions:
            reason = f"planned for location {plan.location!r}; this machine is {here!r}"
            _record_skip(result, item, reason, progress)
        return result
    if trash_dir is not None:
        os.makedirs(trash_dir, exist_ok=True)
    with _engine(_index_url(plan, db)) as engine:
        for marker in pending_markers(plan):
            if marker.name.endswith(NEW_SUFFIX):
                drop_unnamed_marker(marker)
                continue
            fd = lock_marker(marker)
            if fd is None:
                result.skipped.append((str(marker), "another gc --apply is working on it"))
                continue
            try:
                _finish(marker, fd, plan, trash_dir, engine, result)
            finally:
                os.close(fd)
        runs = _Runs()
        for item in plan.deletions:
            _apply_one(item, plan, trash_dir, engine, result, progress, runs)
    return result


def _record_skip(result: GcResult, item: GcItem, reason: str, progress: Progress | None) -> None:
    result.skipped.append((item.checkpoint_path, reason))
    if progress is not None:
        progress(item, f"skipped: {reason}")


def _apply_one(
    item: GcItem,
    plan: GcPlan,
    trash: str | None,
    engine: Engine,
    result: GcResult,
    progress: Progress | None,
    runs: _Runs,
) -> None:
    ckpt = Path(item.checkpoint_path)
    marker = marker_path_for(ckpt)
    try:
        if os.path.lexists(marker):
            raise _Skip(f"another gc is deleting it ({marker.name} exists)")
        row = _current_row(engine, plan.location, item.checkpoint_path)
        sidecar_identity = _recheck(item, plan, row, runs)
    except _Skip as skip:
        _record_skip(result, item, str(skip), progress)
        return
    except OSError as exc:
        _record_skip(result, item, f"cannot be checked: {_one_line(exc)}", progress)
        return
    dest = free_trash_name(trash_path(trash, item.root, str(ckpt))) if trash else None
    content = {
        "version": 1,
        "checkpoint": str(ckpt),
        "ckpt_identity": list(item.ckpt_identity or ()),
        "sidecar_identity": list(sidecar_identity) if sidecar_identity else None,
        "root": item.root,
        "trash": trash,
        "trashed_to": str(dest) if dest else None,
        "location": plan.location,
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        fd = write_marker(marker, content)
    except OSError as exc:
        _record_skip(result, item, f"cannot write its marker: {_one_line(exc)}", progress)
        return
    try:
        outcome = _remove_item(item, dest, sidecar_identity, trash, marker, engine, plan, result)
    finally:
        os.close(fd)
        # Before anything else runs (the progress callback included): the folder's mtime now is
        # gc's own doing, and a change after this is someone else's.
        runs.changed_by_gc(item.run)
    if progress is not None:
        progress(item, outcome)


def _remove_item(
    item: GcItem,
    dest: Path | None,
    sidecar_identity: tuple[int, int] | None,
    trash: str | None,
    marker: Path,
    engine: Engine,
    plan: GcPlan,
    result: GcResult,
) -> str:
    """Steps 2-5 of a deletion, its marker written and locked; return the outcome."""
    ckpt = Path(item.checkpoint_path)
    try:
        remove_file(ckpt, dest)
    except OSError as exc:
        _undo_start(ckpt, dest, marker)
        reason = f"cannot be removed: {_one_line(exc)}"
        result.skipped.append((item.checkpoint_path, reason))
        return f"skipped: {reason}"
    if trash and dest:
        log_trash(trash, ckpt, dest)
    problem = _remove_sidecar(ckpt, sidecar_identity, dest, trash)
    if problem is None:
        _delete_row(engine, plan.location, str(ckpt))
    if problem is None or not problem.retry:
        os.unlink(marker)
    result.deleted.append(str(ckpt))
    result.bytes_freed += item.size
    outcome = f"trashed to {dest}" if dest else "deleted"
    if problem is not None:
        outcome += f" ({problem.reason})"
    return outcome


def _undo_start(ckpt: Path, dest: Path | None, marker: Path) -> None:
    """The checkpoint could not be removed: drop the marker (and a trash name of the same file)."""
    if dest is not None and os.path.lexists(ckpt):
        with suppress(OSError):
            if os.path.samestat(os.lstat(ckpt), os.lstat(dest)):
                os.unlink(dest)
    with suppress(OSError):
        os.unlink(marker)


@dataclass(frozen=True)
class _SidecarProblem:
    reason: str  # one line
    retry: bool  # the next apply tries again (the marker stays)


def _remove_sidecar(
    ckpt: Path, identity: tuple[int, int] | None, ckpt_dest: Path | None, trash: str | None
) -> _SidecarProblem | None:
    """Remove the sidecar of a removed checkpoint if it is still the one re-checked.

    A sidecar changed since (someone wrote to it) is no longer gc's to remove: it stays, an
    orphan that sync indexes and flags. One that cannot be removed (permissions) stays too, and
    the next apply tries again.
    """
    sidecar = sidecar_path_for(ckpt)
    try:
        st = os.lstat(sidecar)
    except FileNotFoundError:
        return None
    if identity is None or (st.st_size, st.st_mtime_ns) != tuple(identity):
        return _SidecarProblem("its sidecar changed meanwhile and was left in place", False)
    dest = None
    if ckpt_dest is not None and trash is not None:
        wanted = sidecar_path_for(ckpt_dest)
        if _already_there(sidecar, st, wanted):
            # An interrupted move got it whole into the trash: finish it, no second copy.
            try:
                os.unlink(sidecar)
            except OSError as exc:
                reason = (
                    f"its sidecar cannot be removed: {_one_line(exc)}; the next gc --apply retries"
                )
                return _SidecarProblem(reason, True)
            return None
        dest = free_name(wanted)
    try:
        remove_file(sidecar, dest)
    except OSError as exc:
        reason = f"its sidecar cannot be removed: {_one_line(exc)}; the next gc --apply retries"
        return _SidecarProblem(reason, True)
    if trash and dest:
        log_trash(trash, sidecar, dest)
    return None


def _already_there(sidecar: Path, st: os.stat_result, dest: Path) -> bool:
    """Whether ``dest`` is the sidecar already: the same file (linked) or the same bytes (a copy
    gets its name only once complete)."""
    try:
        dst = os.lstat(dest)
    except OSError:
        return False
    if os.path.samestat(st, dst):
        return True
    if not (stat.S_ISREG(dst.st_mode) and dst.st_size == st.st_size <= MAX_SIDECAR_BYTES):
        return False
    try:
        return Path(sidecar).read_bytes() == Path(dest).read_bytes()
    except OSError:
        return False


def _finish(
    marker: Path, fd: int, plan: GcPlan, trash: str | None, engine: Engine, result: GcResult
) -> None:
    """Finish (or undo the start of) the deletion an interrupted apply left ``marker`` for
    (opened and locked as ``fd``)."""
    ckpt = checkpoint_of_marker(marker)
    content = read_marker(fd)
    if ckpt is None or content is None or content.get("checkpoint") != str(ckpt):
        result.skipped.append((str(marker), "not a marker gc can read: left as it is"))
        return
    if content.get("location") != plan.location:
        result.skipped.append((str(ckpt), "marker of another location: left as it is"))
        return
    recorded = content.get("trash")
    dest = _marker_dest(content, trash)
    if recorded is not None and dest is None and _may_be_in_other_trash(ckpt):
        result.skipped.append(
            (
                str(ckpt),
                f"an interrupted gc was moving it to the trash {recorded}; "
                "run gc --apply with that --trash to finish it",
            )
        )
        return
    if os.path.lexists(ckpt):
        if dest is None or not _moved_but_not_unlinked(ckpt, content, dest):
            _undo_partial_copy(ckpt, dest)
            os.unlink(marker)
            return
        # Killed between the move's link (or complete copy) and its unlink: finish the move.
        os.unlink(ckpt)
        log_trash(str(trash), ckpt, dest)
    identity = content.get("sidecar_identity")
    problem = _remove_sidecar(
        ckpt, tuple(identity) if isinstance(identity, list) else None, dest, trash
    )
    if problem is not None:
        result.skipped.append((str(ckpt), f"interrupted deletion: {problem.reason}"))
        if problem.retry:
            return
    else:
        _delete_row(engine, plan.location, str(ckpt))
        result.finished.append(str(ckpt))
    os.unlink(marker)


def _may_be_in_other_trash(ckpt: Path) -> bool:
    """Whether finishing needs the trash an interrupted move used: the checkpoint is gone (its
    sidecar follows it there), or still has a second name (a link into that trash)."""
    try:
        return os.lstat(ckpt).st_nlink > 1
    except FileNotFoundError:
        return True


def _marker_dest(content: dict[str, Any], trash: str | None) -> Path | None:
    """The trash destination a marker names, if it lies in the trash given now."""
    recorded, dest = content.get("trash"), content.get("trashed_to")
    if recorded is None or trash is None or not isinstance(dest, str):
        return None
    if os.path.realpath(str(recorded)) != trash or not under(os.path.abspath(dest), trash):
        return None
    return Path(os.path.abspath(dest))


def _moved_but_not_unlinked(ckpt: Path, content: dict[str, Any], dest: Path) -> bool:
    """Whether the checkpoint, unchanged since its marker was written, is already whole at
    ``dest``: the same file (linked) or a copy of its size (a copy gets its name only once
    complete and fsynced)."""
    planned = content.get("ckpt_identity")
    try:
        st, dst = os.lstat(ckpt), os.lstat(dest)
    except OSError:
        return False
    if not isinstance(planned, list) or _identity(st) != tuple(planned):
        return False
    return os.path.samestat(st, dst) or (
        stat.S_ISREG(dst.st_mode) and dst.st_size == st.st_size and st.st_nlink == 1
    )


def _undo_partial_copy(ckpt: Path, dest: Path | None) -> None:
    """The checkpoint is in place and its move is not to be finished (it changed since, or never
    reached the trash): drop a half-made copy, and a trash name that is the same file (the
    changed file stays whole in place). A complete copy of an older content stays in the trash:
    it is then the only copy of that content."""
    if dest is None:
        return
    with suppress(FileNotFoundError):
        os.unlink(dest.with_name(f".{dest.name}{COPY_SUFFIX}"))
    with suppress(OSError):
        if os.path.samestat(os.lstat(ckpt), os.lstat(dest)):
            os.unlink(dest)
