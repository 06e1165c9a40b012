"""Locating the W&B run of a checkpoint on disk: :func:`find_run` and :class:`RunLocation`.

A run is found from the filesystem only: a ``wandb/run-*-<id>`` or ``wandb/offline-run-*-<id>``
directory near the run directory, Lightning's default ``<save_dir>/<project>/<run_id>/checkpoints``
layout, or run ids the caller found elsewhere (hparams, the Hydra config). Folders that cannot be
listed or stat'ed are no runs: :func:`find_run` does not raise for any tree.
"""

from __future__ import annotations

import math
import os
import re
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ckpt_index.sources.hydra import is_name
from ckpt_index.sources.naming import run_dir_of
from ckpt_index.sources.wandb.run import run_path_of

_RUN_DIR = re.compile(r"^(?:offline-)?run-(?P<timespec>\d{8}_\d{6})-(?P<id>.+)$")
# The ids wandb generates; a bare directory name is taken for a run id only when it looks like one.
_GENERATED_ID = re.compile(r"^[a-z0-9]{8}$")


@dataclass(frozen=True)
class RunLocation:
    """Where a checkpoint's W&B run is.

    ``run_dir`` is the local run directory, or None when only the id is known (from Lightning's
    layout or a hint). ``how`` says what found it: ``wandb_dir``, ``lightning_layout`` or ``hint``.
    """

    run_id: str
    run_dir: Path | None = None
    project: str | None = None
    entity: str | None = None
    how: str = "wandb_dir"

    @property
    def run_path(self) -> str | None:
        """``entity/project/run_id`` (or ``project/run_id``) for the W&B API; None without a
        project."""
        return run_path_of(self.entity, self.project, self.run_id)


def _parse_hint(hint: Any) -> tuple[str, str | None, str | None] | None:
    """A run id or run path from hparams/Hydra -> (run_id, project, entity); None if not one."""
    if not is_name(hint):  # hparams may hold anything under "wandb_run_id"
        return None
    parts = [p for p in hint.strip().split("/") if p]
    if not parts or len(parts) > 3 or any(re.search(r"\s", p) for p in parts):
        return None
    run_id = parts[-1]
    project = parts[-2] if len(parts) >= 2 else None
    entity = parts[-3] if len(parts) == 3 else None
    return run_id, project, entity


def is_dir(path: Path) -> bool:
    # Path.is_dir() raises on EACCES and ELOOP handling differs; a folder we cannot see is no run.
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _wandb_dirs(bases: Iterable[Path]) -> list[Path]:
    found = []
    for base in bases:
        for name in ("wandb", ".wandb"):
            candidate = base / name
            if is_dir(candidate):
                found.append(candidate)
    return found


def _run_dirs(wandb_dirs: Iterable[Path]) -> dict[Path, tuple[str, float | None]]:
    """Run directories under the given ``wandb/`` dirs -> (run id, start time)."""
    runs: dict[Path, tuple[str, float | None]] = {}
    for wandb_dir in wandb_dirs:
        try:
            entries = list(os.scandir(wandb_dir))
        except OSError:
            continue
        for entry in entries:
            match = _RUN_DIR.match(entry.name)
            if not match or not is_dir(Path(entry.path)) or not is_name(match["id"]):
                continue
            # latest-run does not match the pattern, but a hand-made symlink to a run might.
            try:
                resolved = Path(entry.path).resolve()
            except (OSError, RuntimeError):  # a symlink loop
                continue
            if resolved in runs:
                continue
            try:
                # wandb names the directory after the local start time.
                started = time.mktime(time.strptime(match["timespec"], "%Y%m%d_%H%M%S"))
            except (ValueError, OverflowError):
                started = None
            runs[resolved] = (match["id"], started)
    return runs


def find_run(
    ckpt_path: str | os.PathLike[str], run_id_hints: Iterable[str] = ()
) -> RunLocation | None:
    """Locate the W&B run that wrote a checkpoint, from the filesystem only.

    Looks for ``wandb/run-*-<id>`` and ``wandb/offline-run-*-<id>`` in the run directory and up to
    two parents (up to two parents of the ``save_dir`` too in Lightning's
    ``<save_dir>/<project>/<run_id>/checkpoints`` layout). With several runs, one whose id is
    known (Lightning's layout, then ``run_id_hints`` in order) wins, else the one that started
    last before the checkpoint was written. Without a run directory, a known id still gives a
    location with ``run_dir=None``.

    Args:
        ckpt_path: the checkpoint file.
        run_id_hints: run ids (or ``entity/project/id`` paths) recorded in hparams or the Hydra
            config.

    Example::

        loc = find_run("outputs/p/abc12345/checkpoints/epoch=1-step=8.ckpt")
        run = read_run(loc) if loc else None
    """
    ckpt = Path(ckpt_path).absolute()
    run_dir = run_dir_of(ckpt)
    bases = [run_dir, *list(run_dir.parents)[:2]]
    wider: list[Path] = []  # searched only for a run whose id is known

    # (id, project, entity, how) in order of preference.
    known: list[tuple[str, str | None, str | None, str]] = []
    if ckpt.parent.name == "checkpoints" and run_dir != run_dir.parent:
        save_dir = run_dir.parent.parent
        wider = [save_dir, *list(save_dir.parents)[:2]]
        known.append((run_dir.name, run_dir.parent.name, None, "lightning_layout"))
    for hint in run_id_hints or ():
        parsed = _parse_hint(hint)
        if parsed:
            known.append((*parsed, "hint"))

    near = _run_dirs(_wandb_dirs(bases))
    if known:
        runs = {**near, **_run_dirs(_wandb_dirs(b for b in dict.fromkeys(wider) if b not in bases))}
        for run_id, project, entity, _how in known:
            matches = sorted(
                (p for p, (rid, _) in runs.items() if rid == run_id), key=lambda p: p.name
            )
            if matches:
                # A resumed run has one directory per session; the newest holds the most history.
                return RunLocation(run_id, matches[-1], project, entity, "wandb_dir")
    if near:
        return _closest_before(near, ckpt)
    for run_id, project, entity, how in known:
        if how == "hint" or _GENERATED_ID.match(run_id):
            return RunLocation(run_id, None, project, entity, how)
    return None


def _closest_before(runs: dict[Path, tuple[str, float | None]], ckpt: Path) -> RunLocation:
    try:
        written = ckpt.stat().st_mtime
    except OSError:
        written = math.inf
    timed = sorted(
        (
            (started, path.name, path, rid)
            for path, (rid, started) in runs.items()
            if started is not None
        ),
    )
    before = [t for t in timed if t[0] <= written]
    if before:
        _, _, path, run_id = before[-1]
    elif timed:
        _, _, path, run_id = timed[0]
    else:
        path, (run_id, _) = sorted(runs.items())[0]
    return RunLocation(run_id, path, how="wandb_dir")


# --------------------------------------------------------------------------------------------
# A run's contents
