"""The folder scans of a gc plan in a helper process (ckpt_index.tools.gc_scan): the same
answers as a scan in this process, whatever the folder holds, and the same plan when the helper
cannot start, dies midway or answers out of turn."""

from __future__ import annotations

import os
import resource
import signal
import sys
from pathlib import Path

import pytest
from helpers.gc_trees import make_run, synced

from ckpt_index.tools import gc_plan, gc_scan
from ckpt_index.tools.gc_plan import GcPolicy, plan_gc
from ckpt_index.tools.gc_scan import FolderScans, scan_folder

ARGS = gc_plan._folder_scans(child=False).args  # the suffixes a plan scans with


def _hostile_folders(root: Path) -> list[str]:
    """Folders holding what a run folder may hold, and names no text file would."""
    plain = root / "exp" / "run" / "checkpoints"
    plain.mkdir(parents=True)
    (plain / "epoch-00.ckpt").write_bytes(b"x" * 10)
    (plain / "epoch-01.ckpt").write_bytes(b"y" * 20)
    os.link(plain / "epoch-01.ckpt", plain / "hard.ckpt")
    (plain / "epoch-00.metadata.yaml").write_text("exp_name: exp\n")
    (plain / "last.ckpt").symlink_to("epoch-01.ckpt")
    (plain / "dangling.ckpt").symlink_to("nowhere.ckpt")
    (plain / ".epoch-00.ckpt.ckpt-index-gc").write_text("{}")  # gc's own marker: skipped
    (plain / "sub.ckpt").mkdir()  # a folder named like a checkpoint
    os.mkfifo(plain / "fifo.ckpt")
    (root / "exp" / "run" / "events.out").write_text("log")  # Lightning's logs beside
    odd = root / "exp" / "new\nline é" / os.fsdecode(b"bad-\xff-bytes")
    odd.mkdir(parents=True)
    (odd / os.fsdecode(b"epoch-\xfe.ckpt")).write_bytes(b"z")
    return [str(plain), str(odd), str(root / "gone"), str(root / "exp" / "events-not-a-dir")]


def test_the_helper_answers_as_a_scan_here(tmp_path: Path) -> None:
    folders = _hostile_folders(tmp_path)
    (tmp_path / "exp" / "events-not-a-dir").write_text("")
    expected = {folder: scan_folder(folder, *ARGS) for folder in folders}
    files = expected[folders[0]][0]
    assert set(files) == {"epoch-00.ckpt", "epoch-01.ckpt", "hard.ckpt"}
    assert files["hard.ckpt"][gc_scan.NLINK] == 2 and files["epoch-00.ckpt"][gc_scan.SIZE] == 10
    assert expected[folders[0]][2] == ["epoch-00.metadata.yaml"]
    assert sorted(expected[folders[0]][1]) == [
        "dangling.ckpt",
        "fifo.ckpt",
        "last.ckpt",
        "sub.ckpt",
    ]
    assert [name for *_, name in expected[folders[0]][3]] == ["last.ckpt"]
    assert expected[folders[2]][5] and expected[folders[3]][5]  # the reasons they are unreadable
    assert expected[folders[0]][6] == [".epoch-00.ckpt.ckpt-index-gc"]  # gc's own: listed only
    with FolderScans(*ARGS) as scans:
        scans.add(folders)
        got = {folder: scans.get(folder) for folder in reversed(folders)}
        assert scans.in_child  # answered by the helper, not by the fallback
    assert got == expected


def _tree(root: Path) -> None:
    for exp in ("a", "b"):
        for run in ("r1", "r2", "r3"):
            make_run(root, exp, run, [0.1, 0.5, 0.3, 0.4, None])
    (root / "a" / "r1" / "checkpoints" / "last.ckpt").symlink_to("epoch-02_step-000300.ckpt")


def _comparable(plan: gc_plan.GcPlan) -> dict:
    data = plan.to_dict()
    del data["created_at"]
    return data


def test_the_same_plan_when_the_helper_cannot_start_dies_or_strays(
    outputs: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tree(outputs)
    synced(outputs, db_url)
    policy = GcPolicy(keep_best=1, by="val/hmean")
    started: list[FolderScans] = []
    real_init = FolderScans.__init__

    def recording_init(self: FolderScans, *args, **kwargs) -> None:
        real_init(self, *args, **kwargs)
        started.append(self)

    monkeypatch.setattr(FolderScans, "__init__", recording_init)
    expected = _comparable(plan_gc(outputs, policy, db=db_url))
    assert len(expected["items"]) == 30 and expected["totals"]["delete"] > 0
    assert started[-1].proc is None  # closed by the plan
    assert all(s.asked == set() for s in started)  # every answer arrived from the helper
    assert all(s.failure is None for s in started)

    # No helper: the folders are scanned in this process.
    monkeypatch.setattr(sys, "executable", "")
    assert _comparable(plan_gc(outputs, policy, db=db_url)) == expected
    monkeypatch.undo()
    monkeypatch.setattr(FolderScans, "__init__", recording_init)

    # The helper killed after its first folders were asked for.
    real_add = FolderScans.add

    def add_then_kill(self: FolderScans, folders: list[str]) -> None:
        real_add(self, folders)
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    monkeypatch.setattr(FolderScans, "add", add_then_kill)
    assert _comparable(plan_gc(outputs, policy, db=db_url)) == expected
    assert "ended" in started[-1].failure
    monkeypatch.setattr(FolderScans, "add", real_add)

    # An answer out of turn: the helper is given up, the rest scanned here.
    def stray_add(self: FolderScans, folders: list[str]) -> None:
        real_add(self, folders)
        if len(self.order) > 1:
            self.order[0], self.order[1] = self.order[1], self.order[0]

    monkeypatch.setattr(FolderScans, "add", stray_add)
    assert _comparable(plan_gc(outputs, policy, db=db_url)) == expected
    assert "out of turn" in started[-1].failure
    monkeypatch.setattr(FolderScans, "add", real_add)

    # A helper that decodes file names otherwise than this process is not used.
    monkeypatch.setattr(gc_scan, "_encoding", lambda: ("latin-1", "surrogateescape"))
    assert _comparable(plan_gc(outputs, policy, db=db_url)) == expected
    assert "decodes names" in started[-1].failure
    monkeypatch.undo()

    # A helper that stops answering is given up after a while.
    monkeypatch.setattr(FolderScans, "__init__", recording_init)
    monkeypatch.setattr(gc_scan, "_SILENT_S", 0.5)

    def add_then_stop(self: FolderScans, folders: list[str]) -> None:
        if self.proc is not None and not self.asked:
            os.kill(self.proc.pid, signal.SIGSTOP)
        real_add(self, folders)

    monkeypatch.setattr(FolderScans, "add", add_then_stop)
    assert _comparable(plan_gc(outputs, policy, db=db_url)) == expected
    assert "silent" in started[-1].failure


def test_many_open_descriptors(tmp_path: Path) -> None:
    """The pipes to the helper may be numbered past 1023 (select() cannot wait on those)."""
    folders = _hostile_folders(tmp_path)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"at most {hard} open files here")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        with FolderScans(*ARGS) as scans:
            assert scans.proc is not None and scans.proc.stdout.fileno() > 1023
            scans.add(folders)
            assert scans.get(folders[0]) == scan_folder(folders[0], *ARGS)
            assert scans.in_child
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_leaving_ends_the_helper(tmp_path: Path) -> None:
    folders = _hostile_folders(tmp_path)
    with pytest.raises(RuntimeError), FolderScans(*ARGS) as scans:
        scans.add(folders)
        proc = scans.proc
        assert proc is not None
        raise RuntimeError("the plan failed")
    assert proc.returncode is not None and scans.proc is None
