"""apply_gc and `gc --apply`: exactly the plan's deletions go, in an order a kill cannot break;
re-checks keep what changed since the plan; --trash keeps the layout and never overwrites; an
interrupted apply is finished by the next one. Both backends.

Plans here are made by hand from the index (``make_plan``), so that these tests pin the apply's
behaviour whatever the planner decides; tests/test_gc_lightning.py and the kill and property
tests go through ``plan_gc`` and the CLI.
"""

from __future__ import annotations

import errno
import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import pytest
from helpers.checkpoints import write_checkpoint
from helpers.index_rows import content, raw_rows, sync, wipe

import ckpt_index.tools.gc_apply as gc_apply
import ckpt_index.tools.gc_markers as gc_markers
import ckpt_index.tools.gc_trash as gc_trash
from ckpt_index import apply_gc
from ckpt_index.index.engine import resolve_location
from ckpt_index.query.table import human_size
from ckpt_index.sidecar.files import sidecar_path_for
from ckpt_index.tools.gc_apply import GC_MARKER_SUFFIX, TRASH_MANIFEST, TrashError
from ckpt_index.tools.gc_plan import GcItem, GcPlan, GcPolicy

OLD = time.time() - 3 * 3600  # files older than any active window


def age(root: Path, when: float = OLD) -> None:
    """Make every file and folder under ``root`` look untouched for hours (runs not active)."""
    for path in [*root.rglob("*"), root]:
        os.utime(path, (when, when), follow_symlinks=False)


def make_tree(root: Path, runs: int = 1, epochs: int = 4) -> list[Path]:
    """``runs`` runs of ``epochs`` checkpoints with sidecars (hmean grows with the epoch)."""
    made = []
    for r in range(runs):
        for epoch in range(epochs):
            ckpt = root / f"exp{r}" / f"run{r}" / f"epoch-{epoch:02d}_step-{epoch * 10:06d}.ckpt"
            write_checkpoint(
                ckpt,
                exp_name=f"exp{r}",
                **{
                    "training.epoch": epoch,
                    "training.global_step": epoch * 10,
                    "metrics.hmean": 0.1 * (epoch + 1),
                },
            )
            made.append(ckpt)
    age(root)
    return made


def identity(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def make_plan(db: str, root: Path, delete: set[Path], **policy: object) -> GcPlan:
    """A plan of every row under ``root``: ``delete`` deleted, the rest kept (file state now)."""
    rows = raw_rows(db)
    items = []
    for path, row in sorted(rows.items()):
        ckpt = Path(path)
        sidecar = sidecar_path_for(ckpt)
        sst = os.lstat(sidecar) if sidecar.exists() else None
        ident = identity(ckpt)
        items.append(
            GcItem(
                checkpoint_path=path,
                sidecar_path=str(sidecar) if sst else None,
                root=str(root),
                group=row["exp_name"] or "",
                exp_name=row["exp_name"],
                run=str(ckpt.parent),
                epoch=row["epoch"],
                global_step=row["global_step"],
                value=row["hmean"],
                size=(ident[2] if ident else 0) + (sst.st_size if sst else 0),
                action="delete" if ckpt in delete and ident else "keep",
                reasons=("test",),
                row_id=row["id"],
                ckpt_dev=ident[0] if ident else None,
                ckpt_ino=ident[1] if ident else None,
                ckpt_size=ident[2] if ident else None,
                ckpt_mtime_ns=ident[3] if ident else None,
                sidecar_size=sst.st_size if sst else None,
                sidecar_mtime_ns=sst.st_mtime_ns if sst else None,
            )
        )
    return GcPlan(
        policy=GcPolicy(keep_best=1, by="hmean", **policy),  # type: ignore[arg-type]
        roots=(str(root),),
        db_url=db,
        location=resolve_location(),
        created_at=datetime.now(timezone.utc).isoformat(),
        items=tuple(items),
    )


def fresh_equals(db: str, root: Path, tmp_path: Path) -> None:
    """After a sync, the index holds what a fresh sync of the disk into a new index holds."""
    sync(root, db)
    fresh = "sqlite:///" + str(tmp_path / "fresh.db")
    sync(root, fresh)
    assert content(db) == content(fresh)
    wipe(fresh)


@pytest.fixture
def tree(outputs: Path, db_url: str) -> list[Path]:
    made = make_tree(outputs, runs=2, epochs=4)
    sync(outputs, db_url)
    return made


def test_deletes_exactly_the_plans_deletions(outputs, db_url, tree, tmp_path):
    doomed = {tree[0], tree[1], tree[5]}
    plan = make_plan(db_url, outputs, doomed)
    seen: list[tuple[str, str]] = []

    result = apply_gc(plan, progress=lambda item, outcome: seen.append((item.row_id, outcome)))

    assert sorted(result.deleted) == sorted(map(str, doomed))
    assert result.skipped == [] and result.finished == []
    assert result.bytes_freed == sum(i.size for i in plan.deletions) > 0
    assert [outcome for _, outcome in seen] == ["deleted"] * 3
    for ckpt in tree:
        assert ckpt.exists() == (ckpt not in doomed)
        assert sidecar_path_for(ckpt).exists() == (ckpt not in doomed)
    rows = raw_rows(db_url)  # also asserts no metric row was left without its checkpoint
    assert set(rows) == {str(p) for p in tree} - {str(p) for p in doomed}
    assert not list(outputs.rglob(f"*{GC_MARKER_SUFFIX}"))
    fresh_equals(db_url, outputs, tmp_path)


def test_unused_parameter_sets_are_swept(outputs, db_url, tmp_path):
    from helpers.index_rows import plain_engine
    from sqlalchemy import text

    for run, lr in (("a", 0.1), ("b", 0.2)):
        write_checkpoint(
            outputs / run / "epoch-00_step-000001.ckpt",
            exp_name=run,
            hyperparameters={"lr": lr},
            schema_version="1.1",
        )
    age(outputs)
    sync(outputs, db_url)
    engine = plain_engine(db_url)

    def sets() -> int:
        with engine.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM param_sets")).scalar_one()

    try:
        assert sets() == 2
        apply_gc(make_plan(db_url, outputs, {outputs / "a" / "epoch-00_step-000001.ckpt"}))
        assert sets() == 1
    finally:
        engine.dispose()


def test_trash_keeps_the_layout_and_never_overwrites(outputs, db_url, tree, tmp_path):
    trash = tmp_path / "trash"
    doomed = tree[1]
    rel = doomed.relative_to(outputs)
    taken = trash / "outputs" / rel
    taken.parent.mkdir(parents=True)
    taken.write_bytes(b"an earlier trashed file")
    before = doomed.read_bytes(), sidecar_path_for(doomed).read_bytes()

    result = apply_gc(make_plan(db_url, outputs, {doomed}), trash=trash)

    assert result.deleted == [str(doomed)] and result.trashed_to == str(trash)
    moved = taken.with_name(taken.name.replace(".ckpt", "~1.ckpt"))
    assert taken.read_bytes() == b"an earlier trashed file"
    assert (moved.read_bytes(), sidecar_path_for(moved).read_bytes()) == before
    assert not doomed.exists() and not sidecar_path_for(doomed).exists()
    manifest = [json.loads(line) for line in (trash / TRASH_MANIFEST).read_text().splitlines()]
    assert [(m["original"], m["trashed"]) for m in manifest] == [
        (str(doomed), str(moved)),
        (str(sidecar_path_for(doomed)), str(sidecar_path_for(moved))),
    ]
    assert str(doomed) not in raw_rows(db_url)
    fresh_equals(db_url, outputs, tmp_path)


def test_trash_across_filesystems_copies_then_unlinks(outputs, db_url, tree, tmp_path, monkeypatch):
    """The trash on another filesystem: every link() or rename() from the root into it fails
    with EXDEV (as the kernel does); within one filesystem they work."""
    trash = tmp_path / "trash"
    calls = []

    def across(real):
        def call(src, dst, *args, **kwargs):
            if str(src).startswith(str(outputs)) and str(dst).startswith(str(trash)):
                calls.append((real.__name__, src))
                raise OSError(errno.EXDEV, "Invalid cross-device link")
            return real(src, dst, *args, **kwargs)

        return call

    for name in ("link", "rename", "replace"):
        monkeypatch.setattr(os, name, across(getattr(os, name)))
    doomed = {tree[0], tree[2]}
    before = {p: (p.read_bytes(), os.stat(p).st_mtime_ns) for p in doomed}

    result = apply_gc(make_plan(db_url, outputs, doomed), trash=trash)

    assert sorted(result.deleted) == sorted(map(str, doomed))
    assert len(calls) == 4  # two checkpoints and two sidecars tried a link first
    for ckpt, (data, mtime_ns) in before.items():
        moved = trash / "outputs" / ckpt.relative_to(outputs)
        assert moved.read_bytes() == data and sidecar_path_for(moved).exists()
        assert os.stat(moved).st_mtime_ns == mtime_ns  # a copy keeps the file's times
        assert not ckpt.exists() and not sidecar_path_for(ckpt).exists()
    assert not [p for p in trash.rglob("*") if "ckpt-index-gc" in p.name]


@pytest.mark.parametrize("where", ["inside", "same", "holding"])
def test_trash_overlapping_a_root_is_refused(outputs, db_url, tree, tmp_path, where, invoke_db):
    trash = {"inside": outputs / "trash", "same": outputs, "holding": tmp_path}[where]
    plan = make_plan(db_url, outputs, {tree[0]})
    with pytest.raises(TrashError):
        apply_gc(plan, trash=trash)
    assert tree[0].exists()
    result = invoke_db(
        "gc", str(outputs), "--keep-best", "1", "--by", "hmean", "--apply", "--trash", str(trash)
    )
    assert result.exit_code == 2, result.output
    assert "root" in result.output
    assert all(p.exists() for p in tree)


# ---- Re-checks: what changed since the plan keeps the checkpoint, with a one-line reason ----


def _replace(ckpt: Path) -> None:
    ckpt.write_bytes(ckpt.read_bytes() + b"more")


def _hard_link(ckpt: Path) -> None:
    os.link(ckpt, ckpt.with_name("copy.bin"))


def _symlink(ckpt: Path) -> None:
    os.symlink(ckpt.name, ckpt.with_name("best-pick.ckpt"))


def _pin_sidecar(ckpt: Path) -> None:
    sidecar = sidecar_path_for(ckpt)
    sidecar.write_text(sidecar.read_text() + "pinned: true\n")
    age(ckpt.parent.parent.parent)


def _activate(ckpt: Path) -> None:
    (ckpt.parent / "epoch-09_step-000090.ckpt.tmp").write_bytes(b"being written")


def _move_away(ckpt: Path) -> None:
    ckpt.unlink()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (_replace, "replaced or modified since the plan"),
        (_hard_link, "has 1 other hard link(s) now"),
        (_symlink, "the target of the link best-pick.ckpt"),
        (_pin_sidecar, "its sidecar changed since the plan"),
        (_activate, "run is active (epoch-09_step-000090.ckpt.tmp changed"),
        (_move_away, "gone since the plan"),
    ],
)
def test_changed_since_the_plan_is_kept(outputs, db_url, tree, change, reason):
    doomed, other = tree[1], tree[5]
    plan = make_plan(db_url, outputs, {doomed, other})
    change(doomed)

    result = apply_gc(plan)

    assert result.deleted == [str(other)]
    [(path, why)] = result.skipped
    assert path == str(doomed) and why.startswith(reason), why
    assert os.path.lexists(sidecar_path_for(doomed))
    assert str(doomed) in raw_rows(db_url)


@pytest.mark.parametrize("change", ["new file", "new link"])
def test_a_change_in_the_run_mid_apply_is_seen(outputs, db_url, tree, change):
    """A run folder is scanned once for its checkpoints (not once each), yet what someone else
    does there during the apply is seen before the next deletion."""
    doomed = [tree[0], tree[1], tree[2]]
    plan = make_plan(db_url, outputs, set(doomed), include_active=change == "new link")

    def meanwhile(item, outcome):
        if item.checkpoint_path == str(doomed[0]):
            # Not within the same clock tick as gc's own change to the folder (a change that
            # close to it is seen at the next rescan, RESCAN_AFTER_S later at most).
            time.sleep(0.05)
            if change == "new file":
                (doomed[0].parent / "epoch-09_step-000090.ckpt").write_bytes(b"training")
            else:
                os.symlink(doomed[2].name, doomed[2].with_name("last.ckpt"))

    result = apply_gc(plan, progress=meanwhile)

    if change == "new file":
        assert result.deleted == [str(doomed[0])]
        assert [why.split(" (")[0] for _, why in result.skipped] == ["run is active"] * 2
    else:
        assert result.deleted == [str(doomed[0]), str(doomed[1])]
        assert result.skipped == [(str(doomed[2]), "the target of the link last.ckpt")]


def test_pinned_in_the_sidecar_before_an_unsynced_plan_is_kept(outputs, db_url, tree):
    doomed = tree[1]
    sidecar = sidecar_path_for(doomed)
    sidecar.write_text(sidecar.read_text() + "pinned: true\n")
    age(outputs)  # the index does not know yet: the plan deletes it
    result = apply_gc(make_plan(db_url, outputs, {doomed}))
    assert result.skipped == [(str(doomed), "pinned (in its sidecar)")]
    assert doomed.exists()


def test_pinned_in_the_index_is_kept(outputs, db_url, tree):
    from helpers.index_rows import plain_engine
    from sqlalchemy import text

    plan = make_plan(db_url, outputs, {tree[1]})
    engine = plain_engine(db_url)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE checkpoints SET pinned = :t WHERE checkpoint_path = :p"),
            {"t": True, "p": str(tree[1])},
        )
    engine.dispose()
    result = apply_gc(plan)
    assert result.skipped == [(str(tree[1]), "pinned (in the index)")] and tree[1].exists()


def test_include_active_deletes_from_an_active_run(outputs, db_url, tree):
    plan = make_plan(db_url, outputs, {tree[1]}, include_active=True)
    _activate(tree[1])
    assert apply_gc(plan).deleted == [str(tree[1])]


def test_a_plan_of_another_location_touches_nothing(outputs, db_url, tree, monkeypatch):
    plan = make_plan(db_url, outputs, {tree[1]})
    monkeypatch.setenv("CKPT_INDEX_LOCATION", "elsewhere")
    result = apply_gc(plan)
    assert result.deleted == [] and "this machine is 'elsewhere'" in result.skipped[0][1]
    assert tree[1].exists()


# ---- Interrupted applies: the next apply finishes them; an orphan sidecar not ours stays ----


class Killed(BaseException):
    """Stands for SIGKILL between two steps (tests/test_gc_kill.py sends the real one)."""


def _kill_at(monkeypatch, name: str) -> None:
    def killed(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(gc_apply, name, killed)


@pytest.mark.parametrize("trash", [False, True])
def test_killed_after_the_checkpoint_went_is_finished_next_time(
    outputs, db_url, tree, tmp_path, monkeypatch, trash
):
    trash_dir = tmp_path / "trash" if trash else None
    doomed, later = tree[1], tree[2]
    plan = make_plan(db_url, outputs, {doomed, later})
    with monkeypatch.context() as m:
        _kill_at(m, "_remove_sidecar")
        with pytest.raises(Killed):
            apply_gc(plan, trash=trash_dir)
    assert not doomed.exists() and sidecar_path_for(doomed).exists() and later.exists()

    # A sync in between sees an orphan sidecar, like any other (and equals a fresh sync).
    fresh_equals(db_url, outputs, tmp_path)
    orphan = sidecar_path_for(doomed)
    user_orphan = tree[6]
    user_orphan.unlink()  # a user's own orphan sidecar: gc never asked for it, so it stays

    result = apply_gc(make_plan(db_url, outputs, {later}), trash=trash_dir)

    assert result.finished == [str(doomed)] and result.deleted == [str(later)]
    assert not orphan.exists() and sidecar_path_for(user_orphan).exists()
    if trash_dir:
        moved = trash_dir / "outputs" / doomed.relative_to(outputs)
        assert moved.exists() and sidecar_path_for(moved).exists()
    assert not list(outputs.rglob(f"*{GC_MARKER_SUFFIX}"))
    assert str(doomed) not in raw_rows(db_url)
    fresh_equals(db_url, outputs, tmp_path)


@contextmanager
def _killed_unlinking(
    monkeypatch: pytest.MonkeyPatch, kill: Path, cross_device: set[Path]
) -> Iterator[None]:
    """Around an apply that must die: unlinking ``kill`` kills it (:class:`Killed`), and
    hard-linking any of ``cross_device`` fails as across file systems (EXDEV: a copy instead)."""
    real_unlink, real_link = os.unlink, os.link

    def unlink(path, *args, **kwargs):
        if Path(path) == kill:
            raise Killed
        return real_unlink(path, *args, **kwargs)

    def link(src, dst, *args, **kwargs):
        if Path(src) in cross_device:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_link(src, dst, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(os, "unlink", unlink)
        m.setattr(os, "link", link)
        with pytest.raises(Killed):
            yield


@pytest.mark.parametrize("across", [False, True])
def test_killed_mid_move_into_the_trash_is_finished(
    outputs, db_url, tree, tmp_path, monkeypatch, across
):
    """Killed after the checkpoint was whole in the trash (linked, or copied from another
    filesystem) but before its unlink: the next apply finishes the move (it does not keep the
    file as "linked" because of its own trash name, nor leave a duplicate)."""
    trash = tmp_path / "trash"
    doomed = tree[1]
    plan = make_plan(db_url, outputs, {doomed})
    with _killed_unlinking(monkeypatch, doomed, {doomed} if across else set()):
        apply_gc(plan, trash=trash)
    moved = trash / "outputs" / doomed.relative_to(outputs)
    assert moved.exists() and doomed.exists()
    assert os.stat(doomed).st_nlink == (1 if across else 2)

    result = apply_gc(make_plan(db_url, outputs, set()), trash=trash)

    assert result.finished == [str(doomed)] and result.skipped == []
    assert not doomed.exists() and not sidecar_path_for(doomed).exists()
    assert moved.exists() and sidecar_path_for(moved).exists()
    assert not list(trash.rglob("*~1*")) and not list(outputs.rglob(f"*{GC_MARKER_SUFFIX}"))
    assert str(doomed) not in raw_rows(db_url)
    fresh_equals(db_url, outputs, tmp_path)


@pytest.mark.parametrize("across", [False, True])
def test_killed_mid_move_of_the_sidecar_is_finished_without_a_second_copy(
    outputs, db_url, tree, tmp_path, monkeypatch, across
):
    trash = tmp_path / "trash"
    doomed = tree[1]
    sidecar = sidecar_path_for(doomed)
    # Killed once the sidecar is whole in the trash, not yet unlinked here.
    with _killed_unlinking(monkeypatch, sidecar, {doomed, sidecar} if across else set()):
        apply_gc(make_plan(db_url, outputs, {doomed}), trash=trash)
    moved = trash / "outputs" / doomed.relative_to(outputs)
    assert not doomed.exists() and sidecar.exists() and sidecar_path_for(moved).exists()

    result = apply_gc(make_plan(db_url, outputs, set()), trash=trash)

    assert result.finished == [str(doomed)] and result.skipped == []
    assert not sidecar.exists() and sidecar_path_for(moved).exists()
    assert not list(trash.rglob("*~1*"))
    assert str(doomed) not in raw_rows(db_url)


def test_killed_before_the_move_is_undone_then_planned_again(
    outputs, db_url, tree, tmp_path, monkeypatch
):
    """Killed mid-copy into the trash: the half copy goes, the checkpoint is planned again."""
    trash = tmp_path / "trash"
    doomed = tree[1]
    real_link = os.link

    def link(src, dst, *args, **kwargs):
        if Path(src) == doomed:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        if str(src).endswith(gc_trash.COPY_SUFFIX):
            raise Killed  # the copy is written, not yet named
        return real_link(src, dst, *args, **kwargs)

    real_unlink = os.unlink

    def unlink(path, *args, **kwargs):
        if str(path).endswith(gc_trash.COPY_SUFFIX) and os.path.exists(path):
            raise Killed  # a SIGKILL runs no clean-up
        return real_unlink(path, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(os, "link", link)
        m.setattr(os, "unlink", unlink)
        with pytest.raises(Killed):
            apply_gc(make_plan(db_url, outputs, {doomed}), trash=trash)
    assert doomed.exists() and list(trash.rglob(f"*{gc_trash.COPY_SUFFIX}"))

    result = apply_gc(make_plan(db_url, outputs, {doomed}), trash=trash)

    assert result.finished == [] and result.deleted == [str(doomed)]
    assert not list(trash.rglob(f"*{gc_trash.COPY_SUFFIX}")) and not doomed.exists()
    assert (trash / "outputs" / doomed.relative_to(outputs)).exists()


def test_a_marker_naming_another_trash_is_reported_not_followed(
    outputs, db_url, tree, tmp_path, monkeypatch
):
    doomed = tree[1]
    with monkeypatch.context() as m:
        _kill_at(m, "_remove_sidecar")
        with pytest.raises(Killed):
            apply_gc(make_plan(db_url, outputs, {doomed}), trash=tmp_path / "trash")
    result = apply_gc(make_plan(db_url, outputs, set()))
    [(path, reason)] = result.skipped
    assert path == str(doomed) and "with that --trash to finish it" in reason
    assert sidecar_path_for(doomed).exists()


def test_a_live_apply_is_never_taken_for_an_interrupted_one(outputs, db_url, tree):
    """Two applies at once: the marker another one holds (locked) is neither finished nor undone;
    once its process is gone (the lock with it), the next apply takes it over."""
    doomed = tree[1]
    marker = gc_apply.marker_path_for(doomed)
    content = {"checkpoint": str(doomed), "location": resolve_location(), "trash": None}
    live = gc_markers.write_marker(marker, content)  # held as the other apply would hold it
    try:
        result = apply_gc(make_plan(db_url, outputs, {doomed}))
        assert result.skipped == [
            (str(marker), "another gc --apply is working on it"),
            (str(doomed), f"another gc is deleting it ({marker.name} exists)"),
        ]
        assert doomed.exists() and marker.exists()
    finally:
        os.close(live)  # its process died
    result = apply_gc(make_plan(db_url, outputs, {doomed}))
    assert result.deleted == [str(doomed)] and result.skipped == [] and not marker.exists()


def test_a_marker_killed_before_its_name_is_dropped(outputs, db_url, tree):
    doomed = tree[1]
    unnamed = doomed.with_name(f".{doomed.name}{GC_MARKER_SUFFIX}.123{gc_markers.NEW_SUFFIX}")
    unnamed.write_text("{")
    result = apply_gc(make_plan(db_url, outputs, {doomed}))
    assert result.deleted == [str(doomed)] and not unnamed.exists()


def test_a_sidecar_changed_mid_deletion_is_left_and_not_retried(
    outputs, db_url, tree, tmp_path, monkeypatch
):
    doomed = tree[1]
    sidecar = sidecar_path_for(doomed)
    real_remove_sidecar = gc_apply._remove_sidecar

    def someone_writes(*args, **kwargs):
        sidecar.write_text(sidecar.read_text() + "pinned: true\n")
        return real_remove_sidecar(*args, **kwargs)

    monkeypatch.setattr(gc_apply, "_remove_sidecar", someone_writes)
    seen = []
    result = apply_gc(make_plan(db_url, outputs, {doomed}), progress=lambda i, o: seen.append(o))
    monkeypatch.undo()

    assert result.deleted == [str(doomed)]
    assert seen == ["deleted (its sidecar changed meanwhile and was left in place)"]
    assert not doomed.exists() and "pinned: true" in sidecar.read_text()
    assert not gc_apply.marker_path_for(doomed).exists()  # not gc's any more: no retry
    age(outputs)
    again = apply_gc(make_plan(db_url, outputs, set()))
    assert again.finished == [] and again.skipped == [] and sidecar.exists()
    fresh_equals(db_url, outputs, tmp_path)


# ---- The command ----


def test_gc_apply_command_reports_skips_and_exits_0(outputs, db_url, tree, invoke_db, monkeypatch):
    import ckpt_index.tools.gc_plan as gc_plan

    changed = tree[1]  # rewritten between the plan and the apply: skipped, reported, exit 0
    real_plan_gc = gc_plan.plan_gc

    def plan_then_change(*args, **kwargs):
        plan = real_plan_gc(*args, **kwargs)
        _replace(changed)
        os.utime(changed, (OLD, OLD))  # an old time: the run does not look active
        return plan

    monkeypatch.setattr(gc_plan, "plan_gc", plan_then_change)
    result = invoke_db("gc", str(outputs), "--keep-best", "1", "--by", "hmean", "--apply")

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    # hmean grows with the epoch: the best of each experiment is also its newest, epoch 3.
    gone = [tree[0], tree[2], tree[4], tree[5], tree[6]]
    assert sorted(lines[:-1]) == sorted(
        [f"deleted  {p.relative_to(outputs)}" for p in gone]
        + [f"skipped  {changed.relative_to(outputs)}: replaced or modified since the plan"]
    )
    summary = re.fullmatch(
        r"deleted 5 checkpoint\(s\) \((\S+), (\d+) bytes freed\), skipped 1", lines[-1]
    )
    assert summary is not None, lines[-1]
    assert summary[1] == human_size(int(summary[2]))  # the units the dry run shows

    assert [p for p in tree if p.exists()] == [changed, tree[3], tree[7]]
    monkeypatch.undo()

    invoke_db("sync", str(outputs))
    again = invoke_db(
        "gc", str(outputs), "--keep-best", "1", "--by", "hmean", "--apply", "--format", "json"
    )
    assert again.exit_code == 0, again.output
    report = json.loads(again.output)
    assert report["deleted"] == [str(changed)] and report["skipped"] == []


def test_a_trash_in_a_policy_file_is_relative_to_the_file(
    outputs, db_url, tree, tmp_path, invoke_db, monkeypatch
):
    (tmp_path / "ckpt-index.toml").write_text(
        '[gc]\nkeep_best = 1\nby = "hmean"\ntrash = "gc-trash"\n'
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # as cron runs it

    result = invoke_db("gc", str(outputs), "--apply")

    assert result.exit_code == 0, result.output
    moved = tmp_path / "gc-trash" / "outputs" / tree[0].relative_to(outputs)
    assert moved.exists() and not tree[0].exists() and not (elsewhere / "gc-trash").exists()


def test_an_index_url_with_a_password_is_found_again_or_asked_for(outputs, pg_url, monkeypatch):
    """A plan shows its URL without the password; apply_gc writes to the real index: the one
    given, or the ambient one the plan was made from; a hidden password is never used."""
    from sqlalchemy.engine import make_url

    from ckpt_index import plan_gc

    with_password = make_url(pg_url).set(password="secret").render_as_string(False)
    monkeypatch.setenv("CKPT_INDEX_DB", with_password)
    make_tree(outputs, runs=1, epochs=3)
    sync(outputs, pg_url)  # trust authentication: any password is accepted
    plan = plan_gc(outputs, keep_best=1, by="hmean")
    assert "secret" not in plan.db_url
    assert len(plan.deletions) == 2  # epochs 0 and 1 (epoch 2 is the best and the newest)
    assert gc_apply._index_url(plan, None) == with_password
    assert gc_apply._index_url(plan, pg_url) == pg_url
    monkeypatch.delenv("CKPT_INDEX_DB")
    with pytest.raises(ValueError, match="without the password"):
        apply_gc(plan)
    assert apply_gc(plan, db=with_password).deleted == [i.checkpoint_path for i in plan.deletions]
