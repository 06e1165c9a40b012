"""The checkpoint naming scheme (SPEC section 9) and the older formats it replaces.

Scheme: ``outputs/<experiment_tag>-<model>_<phase>_<YYYYMMDD_HHMMSS>/checkpoints/`` with
``epoch-XX_step-XXXXXX.ckpt``, ``last.ckpt`` and ``best-<metric>-X.XXXX.ckpt``, where ``<model>`` is
``<architecture>-<encoder>`` (or just ``<architecture>``).

Older names understood here (and renamed by ``ckpt-index rename``):
``epoch_epoch_22_step_step_001932_20251009_015037.ckpt``, ``epoch_22_step_1932.ckpt`` and
Lightning's default ``epoch=7-step=640.ckpt`` (with optional ``-v1`` or ``-metric=value`` parts).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

TIMESTAMP_FORMAT = "%Y%m%d_%H%M%S"

_RUN_DIR = re.compile(
    r"^(?P<tag>.+?)-(?P<model>[^-_][^-]*?(?:-[^-]+)?)_(?P<phase>[A-Za-z]+)_(?P<timestamp>\d{8}_\d{6})$"
)
_SCHEME = re.compile(r"^epoch-(?P<epoch>\d+)_step-(?P<step>\d+)(?P<version>-v\d+)?$")
_BEST = re.compile(r"^best-(?P<metric>.+)-(?P<value>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)(?P<version>-v\d+)?$")
_LAST = re.compile(r"^last(?P<version>-v\d+)?$")
_LEGACY_DOUBLE = re.compile(
    r"^epoch_epoch_(?P<epoch>\d+)_step_step_(?P<step>\d+)(?:_(?P<timestamp>\d{8}_\d{6}))?$"
)
_LEGACY = re.compile(r"^epoch_(?P<epoch>\d+)_step_(?P<step>\d+)(?:_(?P<timestamp>\d{8}_\d{6}))?$")
_LIGHTNING = re.compile(r"(?:^|[-_])epoch=(?P<epoch>\d+)(?:.*?[-_]step=(?P<step>\d+))?")


@dataclass(frozen=True)
class RunDirName:
    """Parts of a run directory name in the scheme."""

    tag: str
    architecture: str
    encoder: str | None
    phase: str
    timestamp: str

    @property
    def model(self) -> str:
        return f"{self.architecture}-{self.encoder}" if self.encoder else self.architecture


@dataclass(frozen=True)
class CheckpointName:
    """What a checkpoint file name says.

    ``format`` is ``scheme``, ``best``, ``last``, ``legacy_double`` (epoch_epoch_..),
    ``legacy`` (epoch_N_step_M), ``lightning`` (epoch=N-step=M) or ``unknown``.
    """

    format: str
    epoch: int | None = None
    step: int | None = None
    metric: str | None = None
    metric_value: float | None = None
    timestamp: str | None = None


def parse_run_dir(name: str) -> RunDirName | None:
    """``ocr_v1-dbnet-resnet18_training_20251015_120000`` -> its parts, or None."""
    match = _RUN_DIR.match(name)
    if not match:
        return None
    architecture, _, encoder = match["model"].partition("-")
    return RunDirName(match["tag"], architecture, encoder or None, match["phase"], match["timestamp"])


def run_dir_name(tag: str, model: str, phase: str, timestamp: str) -> str:
    return f"{tag}-{model}_{phase}_{timestamp}"


def parse_checkpoint_name(name: str) -> CheckpointName:
    """Parse a checkpoint file name (with or without ``.ckpt``)."""
    stem = name[: -len(".ckpt")] if name.endswith(".ckpt") else name
    if m := _SCHEME.match(stem):
        return CheckpointName("scheme", int(m["epoch"]), int(m["step"]))
    if m := _LAST.match(stem):
        return CheckpointName("last")
    if m := _BEST.match(stem):
        return CheckpointName("best", metric=m["metric"], metric_value=float(m["value"]))
    if m := _LEGACY_DOUBLE.match(stem):
        return CheckpointName("legacy_double", int(m["epoch"]), int(m["step"]), timestamp=m["timestamp"])
    if m := _LEGACY.match(stem):
        return CheckpointName("legacy", int(m["epoch"]), int(m["step"]), timestamp=m["timestamp"])
    if m := _LIGHTNING.search(stem):
        step = int(m["step"]) if m["step"] is not None else None
        return CheckpointName("lightning", int(m["epoch"]), step)
    return CheckpointName("unknown")


def scheme_checkpoint_name(epoch: int, step: int) -> str:
    """``epoch-07_step-000640.ckpt``."""
    return f"epoch-{epoch:02d}_step-{step:06d}.ckpt"


def best_checkpoint_name(metric: str, value: float) -> str:
    """``best-hmean-0.8920.ckpt``; the metric's namespace (``val/``) is dropped."""
    short = metric.rsplit("/", 1)[-1]
    return f"best-{short}-{value:.4f}.ckpt"


def run_dir_of(ckpt_path: str | Path) -> Path:
    """The run directory of a checkpoint: the parent of ``checkpoints/``, else the parent."""
    parent = Path(ckpt_path).parent
    return parent.parent if parent.name == "checkpoints" else parent
