"""``ckpt-index pin`` / ``unpin``: mark checkpoints that ``ckpt-index gc`` must never delete.

The sidecar is the source of truth: pinning writes a top-level ``pinned: true`` into it (a
targeted text edit, :mod:`ckpt_index.tools.pin_text`: comments, key order and line endings stay),
then upserts the checkpoint's row so that the index agrees at once (``query --pinned``). A sync
reads the same flag from the sidecar, so deleting the index and syncing again gives the same rows.

- A checkpoint without a sidecar gets one, made from the fallbacks as ``ckpt-index convert``
  makes it (metrics the index holds for it and the fallbacks lack are kept), with ``pinned: true``.
- A link (``last.ckpt``, ``best-*.ckpt``, a hard link) pins the checkpoint it points to: one
  checkpoint, one row, one sidecar.
- An invalid sidecar is refused with its reason and never rewritten; a sidecar that is a link, or
  that changes while it is being edited, is refused too. Writes are atomic (a temporary file in
  the same directory, renamed over the sidecar) and keep the file's mode.
- Pinning a pinned checkpoint, or unpinning one that is not pinned, leaves the file untouched.

One path's problem is that path's outcome (``error``); the others are still done.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckpt_index.safe_io import UnsafeFileError, open_regular
from ckpt_index.sidecar.files import (
    CKPT_SUFFIX,
    MAX_SIDECAR_BYTES,
    SIDECAR_SUFFIX,
    SidecarError,
    checkpoint_path_for,
    parse_sidecar_bytes,
    sidecar_path_for,
    validate_document,
)

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

PathLike = str | os.PathLike[str]

#: Values of :attr:`PinOutcome.action`.
PINNED, ALREADY_PINNED, UNPINNED, NOT_PINNED, FAILED = (
    "pinned",
    "already pinned",
    "unpinned",
    "not pinned",
    "failed",
)


@dataclass(frozen=True)
class PinOutcome:
    """What ``pin``/``unpin`` did with one path."""

    path: str  # as given
    checkpoint_path: str | None  # the checkpoint it names (a link's target); None: none found
    sidecar_path: str | None
    action: str  # pinned | already pinned | unpinned | not pinned | failed
    #: A sidecar was made for the checkpoint (it had none), from the fallbacks.
    created: bool = False
    #: Why the sidecar was rewritten whole (comments and layout not kept); None: a line edit.
    rewritten: str | None = None
    #: The checkpoint's row was written (the index disagreed with the sidecar, or had no row).
    indexed: bool = False
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Refused(Exception):
    """One path's reason for being left alone (its outcome's ``error``)."""


def pin(
    paths: PathLike | Iterable[PathLike],
    db: PathLike | bool | None = None,
    *,
    location: str | None = None,
) -> list[PinOutcome]:
    """Pin each checkpoint of ``paths``: ``pinned: true`` in its sidecar, then in its row.

    ``db``: the index (path or URL, default as everywhere: ``$CKPT_INDEX_DB``, ``./ckpt_index.db``);
    ``False`` leaves the index alone (the next sync reads the flag). Rows are this machine's
    (``location``). Returns one :class:`PinOutcome` per path, in order.
    """
    return _set_pinned(paths, True, db, location)


def unpin(
    paths: PathLike | Iterable[PathLike],
    db: PathLike | bool | None = None,
    *,
    location: str | None = None,
) -> list[PinOutcome]:
    """Unpin each checkpoint of ``paths``: the sidecar's top-level ``pinned`` line is removed,
    then the row updated. A checkpoint that is not pinned is left as it is (``not pinned``)."""
    return _set_pinned(paths, False, db, location)


def _set_pinned(
    paths: PathLike | Iterable[PathLike],
    pinned: bool,
    db: PathLike | bool | None,
    location: str | None,
) -> list[PinOutcome]:
    from ckpt_index.index.engine import resolve_location

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    location = resolve_location(location)
    index = _Index(db, location)
    try:
        return [_one(os.fspath(path), pinned, index) for path in paths]
    finally:
        index.close()


def _one(path: str, pinned: bool, index: _Index) -> PinOutcome:
    target: str | None = None
    sidecar: str | None = None
    try:
        target, link = _checkpoint_of(path, index)
        sidecar = str(sidecar_path_for(target))
        action, created, rewritten = _edit_sidecar(target, sidecar, pinned, index)
    except _Refused as exc:
        return PinOutcome(path, target, sidecar, FAILED, error=str(exc))
    exists = os.path.lexists(sidecar)
    try:
        indexed = index.refresh(target, link, changed=action in (PINNED, UNPINNED), pinned=pinned)
    except Exception as exc:  # noqa: BLE001 - the sidecar is written: say what is left to do
        reason = f"{action}, but the index was not updated ({exc.__class__.__name__}: {exc}); "
        reason += "`ckpt-index sync` will read the sidecar"
        return PinOutcome(
            path,
            target,
            sidecar if exists else None,
            action,
            created,
            rewritten,
            error=" ".join(reason.split()),
        )
    return PinOutcome(
        path, target, sidecar if exists else None, action, created, rewritten, indexed
    )


def _index_spelling(path: str) -> str:
    """How the index spells a path: its folder resolved, its name as it is (as sync lists it)."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(os.path.realpath(folder), name)


def _checkpoint_of(path: str, index: _Index) -> tuple[str, str | None]:
    """(the checkpoint ``path`` names, the link ``path`` is when it is one): a symbolic link
    names its target, a hard link the checkpoint whose row lists it, a sidecar its checkpoint."""
    given = _index_spelling(path)
    if given.endswith(SIDECAR_SUFFIX) and not os.path.islink(given):
        given = str(checkpoint_path_for(given))
    link = None
    target = given
    if os.path.islink(given):
        target, link = os.path.realpath(given), given
    if not target.endswith(CKPT_SUFFIX):
        raise _Refused(f"not a checkpoint (*{CKPT_SUFFIX}): {target}")
    try:
        st = os.stat(target)
    except OSError as exc:
        raise _Refused(f"no checkpoint file: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise _Refused("not a regular file")
    if link is None and st.st_nlink > 1:
        owner = index.row_listing_alias(target)
        if owner is not None and owner != target:
            target, link = owner, given
    return target, link


def _edit_sidecar(
    target: str, sidecar: str, pinned: bool, index: _Index
) -> tuple[str, bool, str | None]:
    """Bring the sidecar of ``target`` to ``pinned``: (action, created, rewritten)."""
    if not os.path.lexists(sidecar):
        if not pinned:
            return NOT_PINNED, False, None
        _create_sidecar(target, sidecar, index)
        return PINNED, True, None
    if os.path.islink(sidecar):
        raise _Refused(f"the sidecar {sidecar} is a symbolic link: it is not edited")
    try:
        with open_regular(sidecar, MAX_SIDECAR_BYTES) as (handle, st):
            data = handle.readall()
    except (UnsafeFileError, OSError) as exc:
        raise _Refused(f"cannot read the sidecar: {getattr(exc, 'reason', exc)}") from None
    try:
        document = parse_sidecar_bytes(data, sidecar)
        meta = validate_document(document, sidecar)
    except SidecarError as exc:
        raise _Refused(f"invalid sidecar, left unchanged: {exc.reason}") from None
    if bool(meta.pinned) == pinned:
        return (ALREADY_PINNED if pinned else NOT_PINNED), False, None
    from ckpt_index.tools.pin_text import edit_pinned

    try:
        edit = edit_pinned(data.decode("utf-8"), document, pinned)
    except ValueError as exc:
        raise _Refused(f"the sidecar cannot be edited: {exc}") from None
    new = edit.text.encode("utf-8")
    try:  # the written text must read back as the same sidecar, with the flag changed
        written = validate_document(parse_sidecar_bytes(new, sidecar), sidecar)
    except SidecarError as exc:
        raise _Refused(f"the edited sidecar would not read back: {exc.reason}") from None
    if bool(written.pinned) != pinned:
        raise _Refused("the edited sidecar would not read back with the flag changed")
    _replace(sidecar, new, st, keep_mtime=_stale(target, st))
    return (PINNED if pinned else UNPINNED), False, edit.rewritten


def _stale(target: str, sidecar: os.stat_result) -> bool:
    """Whether the sidecar is older than its checkpoint (``stale``: the checkpoint was replaced
    after it was written), as a sync judges it."""
    from ckpt_index.index.records import FileState, is_stale

    ckpt = os.stat(target)
    return is_stale(
        FileState(ckpt.st_size, ckpt.st_mtime_ns), FileState(sidecar.st_size, sidecar.st_mtime_ns)
    )


def _replace(path: str, data: bytes, before: os.stat_result, *, keep_mtime: bool) -> None:
    """Write ``data`` over ``path`` atomically, keeping its mode, unless it changed since
    ``before``. ``keep_mtime``: the new file gets the old one's mtime (a stale sidecar stays
    older than its checkpoint: pinning it does not vouch for the replaced checkpoint)."""
    directory, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), stat.S_IMODE(before.st_mode))
            handle.write(data)
            handle.flush()
            if keep_mtime:
                os.utime(handle.fileno(), ns=(before.st_atime_ns, before.st_mtime_ns))
            os.fsync(handle.fileno())
        now = os.lstat(path)
        if _identity(now) != _identity(before):
            raise _Refused("the sidecar changed while it was being edited; nothing was written")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _create_sidecar(target: str, sidecar: str, index: _Index) -> None:
    """Write a pinned sidecar for a checkpoint that has none, as ``convert`` would write it."""
    from ckpt_index.tools.convert import (
        ConversionError,
        check_round_trip,
        infer_isolated,
        metadata_from_inferred,
    )
    from ckpt_index.vocabulary import CANONICAL_METRICS

    [(_, inferred, failure)] = list(infer_isolated([Path(target)]))
    if inferred is None:
        raise _Refused(f"cannot make a sidecar: cannot read the checkpoint: {failure}")
    # Metrics the index holds (e.g. from `sync --wandb-online`) that the fallbacks lack now.
    for name, value in index.metrics_of(target).items():
        if name in CANONICAL_METRICS:
            inferred.fields.setdefault(name, value)
        else:
            inferred.metrics.setdefault(name, value)
    try:
        meta = metadata_from_inferred(inferred, target).model_copy(update={"pinned": True})
        check_round_trip(meta, Path(sidecar))
    except ConversionError as exc:
        raise _Refused(f"cannot make a sidecar: {exc}") from None
    from ckpt_index.sidecar.files import save_metadata

    try:
        save_metadata(meta, target)
    except FileExistsError:
        raise _Refused("a sidecar appeared while one was being made; run pin again") from None
    except OSError as exc:
        raise _Refused(f"cannot write the sidecar: {exc.strerror or exc}") from None


class _Index:
    """The index as pin sees it: opened on first use (``db=False``: never), this location's rows."""

    def __init__(self, db: PathLike | bool | None, location: str) -> None:
        self.db, self.location = db, location
        self._engine: Engine | None = None

    @property
    def enabled(self) -> bool:
        return self.db is not False

    def engine(self) -> Engine:
        if self._engine is None:
            from ckpt_index.index.engine import open_engine

            self._engine = open_engine(None if self.db is True else self.db)  # type: ignore[arg-type]
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def row_listing_alias(self, link: str) -> str | None:
        """The checkpoint whose row lists ``link`` among its aliases (a hard link), if any."""
        if not self.enabled:
            return None
        from sqlalchemy import select

        from ckpt_index.index.tables import checkpoints

        c = checkpoints.c
        with self.engine().connect() as conn:
            if conn.scalar(self._row(c.id, path=link)) is not None:
                return link
            rows = conn.execute(
                select(c.checkpoint_path, c.aliases).where(
                    c.location == self.location,
                    c.aliases.contains(json.dumps(link), autoescape=True),
                )
            ).all()
        return next((path for path, aliases in rows if link in json.loads(aliases)), None)

    def metrics_of(self, target: str) -> dict[str, float]:
        """The metrics the index holds for ``target`` ({} without a row or an index)."""
        if not self.enabled:
            return {}
        from sqlalchemy import select

        from ckpt_index.index.tables import checkpoint_metrics, checkpoints

        m = checkpoint_metrics.c
        stmt = (
            select(m.name, m.value)
            .join(checkpoints, checkpoints.c.id == m.checkpoint_id)
            .where(checkpoints.c.location == self.location, checkpoints.c.checkpoint_path == target)
        )
        with self.engine().connect() as conn:
            return {name: value for name, value in conn.execute(stmt)}

    def _row(self, *columns: Any, path: str):
        from sqlalchemy import select

        from ckpt_index.index.tables import checkpoints

        c = checkpoints.c
        return select(*columns).where(c.location == self.location, c.checkpoint_path == path)

    def refresh(self, target: str, link: str | None, *, changed: bool, pinned: bool) -> bool:
        """Upsert the row of ``target`` from its files, as a sync would build it, when the
        sidecar ``changed`` or the row does not say ``pinned``; return whether it was written.

        The links a sync listed (``aliases``, ``is_last``) are kept and ``link`` is added to
        them; the rest is what a sync of the files gives (a fresh sync gives the same row).
        """
        if not self.enabled:
            return False
        from ckpt_index.index.engine import run_write

        return run_write(
            self.engine(), lambda conn: self._refresh(conn, target, link, changed, pinned)
        )

    def _refresh(
        self, conn: Connection, target: str, link: str | None, changed: bool, pinned: bool
    ) -> bool:
        from ckpt_index.index import store
        from ckpt_index.index.tables import checkpoints

        c = checkpoints.c
        row = conn.execute(
            self._row(
                c.pinned,
                c.aliases,
                c.is_last,
                c.param_set_id,
                path=target,
            )
        ).first()
        if row is not None and not changed and bool(row.pinned) == pinned:
            if link is not None:
                store.add_alias(conn, target, link, location=self.location)
            return False
        if not os.path.exists(sidecar_path_for(target)):
            # Nothing to pin from (unpin of a checkpoint whose sidecar is gone): the flag only;
            # rebuilding the row would read the untrusted checkpoint in this process.
            if row is None or not row.pinned:
                return False
            conn.execute(
                checkpoints.update()
                .where(c.location == self.location, c.checkpoint_path == target)
                .values(pinned=False)
            )
            return True
        record = _record_from_files(target)
        # Every column a fresh sync sets (the upsert leaves a column the record omits as it was).
        record.columns.setdefault("unsafe_globals", None)
        if row is not None:
            record.columns.update(aliases=row.aliases, is_last=row.is_last)
        store.upsert_records(conn, [record], location=self.location)
        if link is not None:
            store.add_alias(conn, target, link, location=self.location)
        if row is not None and row.param_set_id is not None:
            store.sweep_param_sets(conn, [row.param_set_id])
        return True


def _record_from_files(target: str) -> Any:
    """The row of checkpoint ``target`` built from its files (it has a sidecar), as a sync builds
    it."""
    from ckpt_index.index.records import FileState
    from ckpt_index.sync.build import SyncOptions, build_record_safely, checked_record
    from ckpt_index.sync.roots import RACY_WINDOW_NS
    from ckpt_index.sync.scan import Found

    item = Found()
    st = os.stat(target)
    item.ckpt = FileState(st.st_size, st.st_mtime_ns)
    sidecar = str(sidecar_path_for(target))
    sst = os.stat(sidecar)
    item.sidecar_path, item.sidecar = sidecar, FileState(sst.st_size, sst.st_mtime_ns)
    racy_after_ns = time.time_ns() - RACY_WINDOW_NS
    built = build_record_safely(target, item, racy_after_ns, SyncOptions())
    record, _ = checked_record(target, item, *built)
    return record
