"""`ckpt-index rename` never loses anything: no file is overwritten, best*/last* names and
linked files are kept, and an interrupted rename completes on the next run (issue 8 item 4).

Trees written by a real Lightning Trainer on the CPU: UniqueModelCheckpoint's ``best-*`` link,
``save_last="link"``, Lightning's own names, ``best-{epoch}-{step}`` file names. Every case is
checked on the files (names, link targets, inodes, sidecars) and, where an index exists, on its
rows. Crashes are injected at every mutating system call, in-process (an OSError) and for real
(SIGKILL of a child process); a rerun must end where an uninterrupted run ends.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")

from helpers.modules import Detector, tiny_trainer  # noqa: E402  (logs val/hmean: epochs 2, 4 best)
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from ckpt_index.lightning import MetadataCallback, UniqueModelCheckpoint  # noqa: E402
from ckpt_index.sidecar.files import sidecar_path_for  # noqa: E402
from ckpt_index.tools.rename import rename_checkpoints  # noqa: E402

STAMP = "20251015_120000"
RUN = f"ocr_v1-dbnet-resnet18_training_{STAMP}"
MUTATING = ("link", "unlink", "symlink", "replace", "rename")


def fit(root: Path, checkpoint: ModelCheckpoint, max_epochs: int = 6) -> None:
    data = DataLoader(TensorDataset(torch.randn(8, 4), torch.randn(8, 1)), batch_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = tiny_trainer(
            root, max_epochs=max_epochs, callbacks=[checkpoint, MetadataCallback(db=False)]
        )
        trainer.fit(Detector(), data, data)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """Four trees, trained once per module and copied by each test."""
    base = tmp_path_factory.mktemp("trained")
    unique = dict(
        experiment_tag="ocr_v1", timestamp=STAMP, monitor="val/hmean", mode="max", save_top_k=2
    )
    # epoch-02_step-000006, epoch-04_step-000010; best-hmean-0.9500 and last both link epoch 4.
    fit(base, UniqueModelCheckpoint(outputs_dir=base / "scheme", save_last="link", **unique))
    # Lightning's names: epoch=2-step=6, epoch=4-step=10, last.ckpt -> epoch=4-step=10.ckpt.
    fit(
        base,
        ModelCheckpoint(
            dirpath=base / "lightning",
            monitor="val/hmean",
            mode="max",
            save_top_k=2,
            save_last="link",
        ),
    )
    # The scheme's run directory with Lightning's file names: best-hmean-0.9500 -> epoch=4-step=10.
    fit(
        base,
        UniqueModelCheckpoint(
            outputs_dir=base / "old_names", filename="{epoch}-{step}", save_last=True, **unique
        ),
    )
    # best-epoch=4-step=10.ckpt and last-epoch=5-step=12.ckpt as real files.
    prefixed = ModelCheckpoint(
        dirpath=base / "prefixed",
        filename="best-{epoch}-{step}",
        monitor="val/hmean",
        mode="max",
        save_top_k=1,
        save_last=True,
    )
    prefixed.CHECKPOINT_NAME_LAST = "last-{epoch}-{step}"
    fit(base, prefixed)
    return base


def copy_tree(trained: Path, name: str, tmp_path: Path) -> Path:
    """A copy of one trained tree (links copied as links); returns its checkpoint directory."""
    root = tmp_path / "root"
    shutil.copytree(trained / name, root / name, symlinks=True)
    ckpts = root / name / RUN / "checkpoints"
    return ckpts if ckpts.is_dir() else root / name


def snapshot(root: Path) -> dict[str, tuple[str, str]]:
    """Every entry below root: a link's text, a file's content hash."""
    entries = {}
    for directory, dirs, files in os.walk(root):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(directory, d))]:
            path = Path(directory, name)
            rel = str(path.relative_to(root))
            if path.is_symlink():
                entries[rel] = ("link", os.readlink(path))
            else:
                entries[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
    return entries


def rows(db: Path, root: Path) -> set[tuple[str, str | None]]:
    """The index's (checkpoint_path, sidecar_path), relative to root."""
    real = os.path.realpath(root)
    with sqlite3.connect(db) as conn:
        found = conn.execute("SELECT checkpoint_path, sidecar_path FROM checkpoints").fetchall()
    return {(os.path.relpath(c, real), s and os.path.relpath(s, real)) for c, s in found}


def resolves_to(link: Path, target: Path) -> bool:
    return link.is_symlink() and link.exists() and os.path.samefile(link, target)


# ------------------------------------------------------------------- links and aliases kept
def test_delete_old_keeps_the_target_of_the_best_and_last_links(trained, tmp_path, invoke, db_path):
    ckpts = copy_tree(trained, "scheme", tmp_path)
    assert os.readlink(ckpts / "best-hmean-0.9500.ckpt") == "epoch-04_step-000010.ckpt"
    assert os.readlink(ckpts / "last.ckpt") == "epoch-04_step-000010.ckpt"
    assert invoke("sync", str(tmp_path / "root")).exit_code == 0

    result = invoke("rename", str(tmp_path / "root"), "--delete-old", "--keep-from-epoch", "5")
    assert result.exit_code == 0, result.output
    assert "deleted 1" in result.stdout and "kept: the target of a link" in result.output

    best = ckpts / "epoch-04_step-000010.ckpt"
    assert best.is_file() and sidecar_path_for(best).is_file()
    assert resolves_to(ckpts / "best-hmean-0.9500.ckpt", best)
    assert resolves_to(ckpts / "last.ckpt", best)
    assert not (ckpts / "epoch-02_step-000006.ckpt").exists()
    assert not (ckpts / "epoch-02_step-000006.metadata.yaml").exists()
    # One checkpoint, one row: the links are aliases of the file they point to.
    names = {Path(c).name for c, _ in rows(db_path, tmp_path / "root")}
    assert names == {"epoch-04_step-000010.ckpt"}
    # What `query --best-by` answers from: no row is a dangling link.
    assert all((tmp_path / "root" / c).exists() for c, _ in rows(db_path, tmp_path / "root"))


@pytest.mark.parametrize(
    "alias",
    [
        "hard link best.ckpt",
        "hard link elsewhere",
        "relative link elsewhere",
        "absolute link elsewhere",
    ],
)
def test_a_file_with_any_alias_is_never_deleted(trained, tmp_path, alias):
    ckpts = copy_tree(trained, "scheme", tmp_path)
    old = ckpts / "epoch-02_step-000006.ckpt"
    favourites = tmp_path / "root" / "favourites"
    favourites.mkdir()
    other = ckpts / "best.ckpt" if alias == "hard link best.ckpt" else favourites / "pick.pt"
    if alias.startswith("hard link"):
        os.link(old, other)
    elif alias.startswith("relative"):
        os.symlink(os.path.relpath(old, favourites), other)
    else:
        os.symlink(old, other)
    before = old.read_bytes()

    summary = rename_checkpoints(tmp_path / "root", delete_old=True, keep_from_epoch=3, db=False)

    assert old.read_bytes() == before and os.path.samefile(other, old)
    assert sidecar_path_for(old).is_file()
    assert summary.deleted == 0 and summary.errors == 0


def test_nothing_outside_the_root_is_renamed_or_deleted(trained, tmp_path):
    ckpts = copy_tree(trained, "lightning", tmp_path)
    outside = tmp_path / "outside"
    shutil.copytree(ckpts, outside, symlinks=True)
    root = tmp_path / "root"
    os.symlink(outside, root / "linked_dir")
    os.symlink(outside / "epoch=2-step=6.ckpt", root / "epoch=1-step=1.ckpt")
    before = snapshot(outside)

    summary = rename_checkpoints(root, delete_old=True, keep_from_epoch=100, db=False)

    assert snapshot(outside) == before
    assert os.readlink(root / "epoch=1-step=1.ckpt") == str(outside / "epoch=2-step=6.ckpt")
    assert any(a.kind == "skip" and a.path.endswith("epoch=1-step=1.ckpt") for a in summary.actions)
    assert summary.errors == 0


# ---------------------------------------------------------------------- best*/last* names
EXTRA_KEPT = [
    "best.ckpt",
    "last-v1.ckpt",
    "Best-epoch=1-step=2.ckpt",
    "last_epoch_1_step_2.ckpt",
    "best_epoch_epoch_01_step_step_000002.ckpt",
    "bestepoch=1-step=2.ckpt",
]


def test_best_and_last_names_are_never_renamed_or_deleted(trained, tmp_path, invoke):
    ckpts = copy_tree(trained, "prefixed", tmp_path)
    real = {"best-epoch=4-step=10.ckpt", "last-epoch=4-step=10.ckpt"}
    assert {p.name for p in ckpts.glob("*.ckpt")} == real
    for name in EXTRA_KEPT:
        shutil.copyfile(ckpts / "best-epoch=4-step=10.ckpt", ckpts / name)
    before = snapshot(tmp_path / "root")

    for _ in range(
        2
    ):  # an earlier version renamed best-epoch=... on one run, deleted it on the next
        result = invoke(
            "rename", str(tmp_path / "root"), "--delete-old", "--keep-from-epoch", "100"
        )
        assert result.exit_code == 0, result.output
        assert "renamed 0, deleted 0" in result.stdout
        assert snapshot(tmp_path / "root") == before


# ------------------------------------------------------------------------ links follow
@pytest.mark.parametrize(
    ("tree", "link"), [("lightning", "last.ckpt"), ("old_names", "best-hmean-0.9500.ckpt")]
)
def test_links_follow_their_renamed_target(trained, tmp_path, tree, link):
    ckpts = copy_tree(trained, tree, tmp_path)
    assert os.readlink(ckpts / link) == "epoch=4-step=10.ckpt"
    favourites = tmp_path / "root" / "favourites"
    favourites.mkdir()
    os.symlink(
        os.path.relpath(ckpts / "epoch=4-step=10.ckpt", favourites), favourites / "relative.ckpt"
    )
    os.symlink(ckpts / "epoch=4-step=10.ckpt", favourites / "absolute.ckpt")
    os.symlink("relative.ckpt", favourites / "chained.ckpt")

    summary = rename_checkpoints(tmp_path / "root", db=False)

    new = ckpts / "epoch-04_step-000010.ckpt"
    assert os.readlink(ckpts / link) == "epoch-04_step-000010.ckpt"
    for name in ("relative.ckpt", "absolute.ckpt", "chained.ckpt"):
        assert resolves_to(favourites / name, new), name
    assert not os.path.isabs(os.readlink(favourites / "relative.ckpt"))
    assert os.readlink(favourites / "absolute.ckpt") == str(new)
    assert (
        sidecar_path_for(new).is_file()
        and not sidecar_path_for(ckpts / "epoch=4-step=10.ckpt").exists()
    )
    assert (summary.renamed, summary.relinked, summary.errors) == (2, 3, 0)


def test_a_link_an_earlier_rename_left_dangling_is_repaired(trained, tmp_path):
    ckpts = copy_tree(trained, "lightning", tmp_path)
    # What the previous version left: the file moved, last.ckpt still at the old name.
    for old, new in (
        ("epoch=4-step=10.ckpt", "epoch-04_step-000010.ckpt"),
        ("epoch=4-step=10.metadata.yaml", "epoch-04_step-000010.metadata.yaml"),
    ):
        os.rename(ckpts / old, ckpts / new)
    assert not (ckpts / "last.ckpt").exists()

    summary = rename_checkpoints(tmp_path / "root", db=False)

    assert resolves_to(ckpts / "last.ckpt", ckpts / "epoch-04_step-000010.ckpt")
    assert summary.relinked == 1 and summary.errors == 0


# ------------------------------------------------------------------ nothing overwritten
@pytest.mark.parametrize("occupant", ["file", "dangling link", "link", "directory", "sidecar only"])
def test_an_occupied_name_is_never_overwritten(trained, tmp_path, occupant):
    ckpts = copy_tree(trained, "lightning", tmp_path)
    target = ckpts / "epoch-02_step-000006.ckpt"
    if occupant == "file":
        target.write_bytes(b"precious")
    elif occupant == "dangling link":
        os.symlink("nowhere.ckpt", target)
    elif occupant == "link":
        os.symlink("last.ckpt", target)
    elif occupant == "directory":
        target.mkdir()
        (target / "inside").write_bytes(b"precious")
    else:
        sidecar_path_for(target).write_text("precious: true\n")
    before = snapshot(tmp_path / "root")

    summary = rename_checkpoints(tmp_path / "root", db=False)

    after = snapshot(tmp_path / "root")
    occupied = {k: v for k, v in before.items() if "epoch-02" in k}
    assert occupied and all(after[k] == v for k, v in occupied.items())
    assert after["lightning/epoch=2-step=6.ckpt"] == before["lightning/epoch=2-step=6.ckpt"]
    assert any(a.kind == "skip" and a.reason == "target exists" for a in summary.actions)


def test_a_name_taken_during_the_rename_is_not_overwritten(trained, tmp_path, monkeypatch):
    ckpts = copy_tree(trained, "lightning", tmp_path)
    target = ckpts / "epoch-02_step-000006.ckpt"
    real_link = os.link

    def racing_link(src, dst, *args, **kwargs):
        if Path(dst) == target and not target.exists():
            target.write_bytes(b"written meanwhile")
        return real_link(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "link", racing_link)
    summary = rename_checkpoints(tmp_path / "root", db=False)
    monkeypatch.undo()

    assert target.read_bytes() == b"written meanwhile"
    assert (ckpts / "epoch=2-step=6.ckpt").is_file() and (
        ckpts / "epoch=2-step=6.metadata.yaml"
    ).is_file()
    assert summary.errors == 1
    assert (
        rename_checkpoints(tmp_path / "root", db=False).errors == 0
    )  # then: skipped, target exists
    assert target.read_bytes() == b"written meanwhile"


# ---------------------------------------------------------------------- crash safety
def reference(trained: Path, tmp_path: Path, invoke_sync) -> tuple[dict, set]:
    """Files and rows after an uninterrupted rename of the lightning tree."""
    done = tmp_path / "reference"
    done.mkdir()
    copy_tree(trained, "lightning", done)
    db = done / "index.db"
    invoke_sync(done / "root", db)
    rename_checkpoints(done / "root", db=db)
    return snapshot(done / "root"), rows(db, done / "root")


@pytest.fixture
def synced(invoke):
    def run(root: Path, db: Path) -> None:
        result = invoke("sync", str(root), "--db", str(db))
        assert result.exit_code == 0, result.output

    return run


def fail_at(monkeypatch, call: int) -> list[str]:
    """Make the call-th mutating os call raise EIO (once); returns the calls seen."""
    seen: list[str] = []
    for name in MUTATING:
        real = getattr(os, name)

        def failing(*args, _real=real, _name=name, **kwargs):
            seen.append(_name)
            if len(seen) == call:
                raise OSError(errno.EIO, f"injected failure at {_name}")
            return _real(*args, **kwargs)

        monkeypatch.setattr(os, name, failing)
    return seen


@pytest.mark.parametrize("call", range(1, 11))
def test_a_failure_at_any_step_completes_on_rerun(trained, tmp_path, monkeypatch, synced, call):
    expected_files, expected_rows = reference(trained, tmp_path, synced)
    copy_tree(trained, "lightning", tmp_path)
    root, db = tmp_path / "root", tmp_path / "index.db"
    synced(root, db)

    seen = fail_at(monkeypatch, call)
    interrupted = rename_checkpoints(root, db=db)
    monkeypatch.undo()
    assert len(seen) >= call, "the run makes fewer mutating calls than the test expects"
    assert interrupted.errors == 1

    rerun = rename_checkpoints(root, db=db)
    assert rerun.errors == 0
    assert snapshot(root) == expected_files
    assert rows(db, root) == expected_rows
    assert rename_checkpoints(root, db=db).to_dict()["actions"] == []  # and then nothing to do


KILLER = """
import os, signal, sys
from ckpt_index.tools.rename import rename_checkpoints
calls = [0]
for name in {mutating!r}:
    real = getattr(os, name)
    def wrapped(*args, _real=real, **kwargs):
        calls[0] += 1
        if calls[0] == int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGKILL)
        return _real(*args, **kwargs)
    setattr(os, name, wrapped)
rename_checkpoints(sys.argv[1], db=sys.argv[2])
"""


def test_sigkill_at_any_step_completes_on_rerun(trained, tmp_path, synced):
    expected_files, expected_rows = reference(trained, tmp_path, synced)
    script = KILLER.format(mutating=MUTATING)
    killed = 0
    for call in range(1, 30):
        case = tmp_path / f"kill{call}"
        case.mkdir()
        copy_tree(trained, "lightning", case)
        root, db = case / "root", case / "index.db"
        synced(root, db)
        proc = subprocess.run(
            [sys.executable, "-c", script, str(root), str(db), str(call)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if proc.returncode == 0:
            break  # the run needs fewer calls: every step has been interrupted once
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        killed += 1
        assert rename_checkpoints(root, db=db).errors == 0
        assert snapshot(root) == expected_files, f"killed at call {call}"
        assert rows(db, root) == expected_rows, f"killed at call {call}"
    assert (
        killed >= 8
    )  # two renames (link, link, unlink, unlink each) and a relink (symlink, replace)


def test_a_sidecar_left_behind_by_an_earlier_version_is_moved(trained, tmp_path, invoke, db_path):
    ckpts = copy_tree(trained, "lightning", tmp_path)
    assert invoke("sync", str(tmp_path / "root")).exit_code == 0
    # The previous version moved the checkpoint first and was killed before the sidecar.
    os.rename(ckpts / "epoch=2-step=6.ckpt", ckpts / "epoch-02_step-000006.ckpt")

    result = invoke("rename", str(tmp_path / "root"), "--format", "json")
    assert result.exit_code == 0, result.output

    assert (ckpts / "epoch-02_step-000006.metadata.yaml").is_file()
    assert not (ckpts / "epoch=2-step=6.metadata.yaml").exists()
    assert (
        "lightning/epoch-02_step-000006.ckpt",
        "lightning/epoch-02_step-000006.metadata.yaml",
    ) in rows(db_path, tmp_path / "root")
    assert not any("epoch=2" in c for c, _ in rows(db_path, tmp_path / "root"))


# --------------------------------------------------------------------------- the index
def test_rows_follow_through_a_symlinked_root_and_over_a_stale_row(
    trained, tmp_path, invoke_db, db_url
):
    ckpts = copy_tree(trained, "lightning", tmp_path)
    via = tmp_path / "via"
    os.symlink(tmp_path / "root", via)
    # A stale row at a target name: a file indexed there once, since deleted.
    stale = ckpts / "epoch-02_step-000006.ckpt"
    shutil.copyfile(ckpts / "epoch=2-step=6.ckpt", stale)
    assert invoke_db("sync", str(via)).exit_code == 0
    stale.unlink()

    result = invoke_db("rename", str(via), "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["renamed"] == 2

    listed = invoke_db("query", "--format", "paths", "--include-orphans").stdout.split()
    real = os.path.realpath(ckpts)
    # last.ckpt is a link (save_last="link"): an alias of epoch 4's row, not a row.
    assert sorted(Path(p).name for p in listed) == [
        "epoch-02_step-000006.ckpt",
        "epoch-04_step-000010.ckpt",
    ]
    assert all(p.startswith(real) and os.path.exists(p) for p in listed)
    sync = json.loads(invoke_db("sync", str(via), "--format", "json").stdout)
    assert (sync["added"], sync["removed"]) == (0, 0)


def test_a_dangling_link_out_of_the_root_is_left_alone(trained, tmp_path):
    copy_tree(trained, "lightning", tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "epoch-09_step-000090.ckpt").write_bytes(b"not ours")
    os.symlink(outside / "epoch=9-step=90.ckpt", tmp_path / "root" / "far.ckpt")

    rename_checkpoints(tmp_path / "root", db=False)

    assert os.readlink(tmp_path / "root" / "far.ckpt") == str(outside / "epoch=9-step=90.ckpt")


def test_a_kept_link_target_is_still_renamed(trained, tmp_path):
    # --delete-old keeps epoch=4-step=10 (last.ckpt links it) and still moves it to the scheme.
    ckpts = copy_tree(trained, "lightning", tmp_path)
    summary = rename_checkpoints(tmp_path / "root", delete_old=True, keep_from_epoch=5, db=False)
    assert {p.name for p in ckpts.glob("*.ckpt")} == {"epoch-04_step-000010.ckpt", "last.ckpt"}
    assert resolves_to(ckpts / "last.ckpt", ckpts / "epoch-04_step-000010.ckpt")
    assert (summary.deleted, summary.renamed, summary.relinked) == (1, 1, 1)
