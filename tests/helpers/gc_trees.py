"""Trees for the ``gc`` tests: run folders of checkpoints with real sidecars, synced by the real
sync, their mtimes moved back so that no run looks active."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from helpers.checkpoints import write_checkpoint
from helpers.index_rows import sync

HOUR = 3600


def ckpt_name(epoch: int) -> str:
    return f"epoch-{epoch:02d}_step-{(epoch + 1) * 100:06d}.ckpt"


def make_run(
    root: Path,
    exp: str,
    run: str,
    hmeans: list[float | None],
    *,
    losses: list[float] | None = None,
    pinned: Iterable[int] = (),
) -> list[Path]:
    """One run folder (``root/exp/run/checkpoints``) with a checkpoint per epoch; ``None``: a
    checkpoint whose sidecar logged no hmean. The sidecars of the ``pinned`` epochs say
    ``pinned: true`` (as ``ckpt-index pin`` leaves them)."""
    folder = root / exp / run / "checkpoints"
    paths = []
    for epoch, hmean in enumerate(hmeans):
        metrics: dict[str, Any] = {}
        if hmean is not None:
            metrics["val/hmean"] = hmean
        if losses is not None:
            metrics["val/loss"] = losses[epoch]
        changes: dict[str, Any] = {
            "exp_name": exp,
            "training.epoch": epoch,
            "training.global_step": (epoch + 1) * 100,
            "metrics": {"hmean": hmean, "additional_metrics": metrics},
        }
        if epoch in pinned:
            changes["pinned"] = True
        paths.append(write_checkpoint(folder / ckpt_name(epoch), **changes))
    return paths


def age_tree(root: Path, seconds: float = HOUR) -> None:
    """Every file, link and folder under ``root`` (and ``root``) changed ``seconds`` ago."""
    when = time.time_ns() - int(seconds * 1e9)
    for folder, dirs, files in os.walk(root, topdown=False):
        for name in files + dirs:
            os.utime(os.path.join(folder, name), ns=(when, when), follow_symlinks=False)
    os.utime(root, ns=(when, when))


def synced(root: Path, db: str, **kwargs: Any) -> None:
    age_tree(root)
    sync(root, db, **kwargs)
