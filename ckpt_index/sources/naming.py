"""The checkpoint naming scheme and the older formats it replaces.

Scheme: ``outputs/<experiment_tag>-<model>_<phase>_<YYYYMMDD_HHMMSS>/checkpoints/`` with
``epoch-XX_step-XXXXXX.ckpt``, ``last.ckpt`` and ``best-<metric>-X.XXXX.ckpt``, where ``<model>`` is
``<architecture>-<encoder>`` (or just ``<architecture>``).

Older names understood here (and renamed by ``ckpt-index rename``):
``epoch_epoch_22_step_step_001932_20251009_015037.ckpt``, ``epoch_22_step_1932.ckpt`` and
Lightning's default ``epoch=7-step=640.ckpt`` (with optional ``-v1`` or ``-metric=value`` parts).
Names that give the epoch alone (``epoch-5.ckpt``, ``epoch_15.ckpt``, ``epoch=10.ckpt``) are read
for the epoch; they are not renamed, having no step.

Names come from untrusted trees, so parsing is bounded: digits are ASCII only, an epoch or step
outside 0..2**63-1 is None (it would not fit the index's 64-bit columns; a 5,000-digit run would
not even convert), a metric value that is not finite is None, and names that do not encode as
UTF-8 (undecodable bytes, lone surrogates) give no text parts. Every pattern is anchored or
scans once (no nested or adjacent unbounded repeats that could backtrack quadratically).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

TIMESTAMP_FORMAT = "%Y%m%d_%H%M%S"

# ASCII digits only ([0-9], not \d): int() also accepts Arabic-Indic or full-width digits.
_RUN_DIR = re.compile(
    r"^(?P<tag>.+?)-(?P<model>[^-_][^-]*?(?:-[^-]+)?)_(?P<phase>[A-Za-z]+)"
    r"_(?P<timestamp>[0-9]{8}_[0-9]{6})$"
)
_SCHEME = re.compile(r"^epoch-(?P<epoch>[0-9]+)_step-(?P<step>[0-9]+)(?P<version>-v[0-9]+)?$")
_BEST = re.compile(
    r"^best-(?P<metric>.+)-(?P<value>-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)(?P<version>-v[0-9]+)?$"
)
_LAST = re.compile(r"^last(?P<version>-v[0-9]+)?$")
_LEGACY_DOUBLE = re.compile(
    r"^epoch_epoch_(?P<epoch>[0-9]+)_step_step_(?P<step>[0-9]+)(?:_(?P<timestamp>[0-9]{8}_[0-9]{6}))?$"
)
_LEGACY = re.compile(
    r"^epoch_(?P<epoch>[0-9]+)_step_(?P<step>[0-9]+)(?:_(?P<timestamp>[0-9]{8}_[0-9]{6}))?$"
)
_EPOCH_ONLY = re.compile(r"^epoch[-_](?P<epoch>[0-9]+)(?P<version>-v[0-9]+)?$")
_LIGHTNING = re.compile(r"(?:^|[-_])epoch=(?P<epoch>[0-9]+)(?:.*?[-_]step=(?P<step>[0-9]+))?")
#: The largest epoch or step a name may give: the index stores them in signed 64-bit columns.
MAX_COUNTER = 2**63 - 1


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
    ``legacy`` (epoch_N_step_M), ``lightning`` (epoch=N-step=M, the step optional),
    ``epoch_only`` (epoch-N, epoch_N) or ``unknown``.
    """

    format: str
    epoch: int | None = None
    step: int | None = None
    metric: str | None = None
    metric_value: float | None = None
    timestamp: str | None = None


def parse_run_dir(name: str) -> RunDirName | None:
    """``ocr_v1-dbnet-resnet18_training_20251015_120000`` -> its parts, or None."""
    if not _is_text(name):
        return None
    match = _RUN_DIR.match(name)
    if not match:
        return None
    architecture, _, encoder = match["model"].partition("-")
    return RunDirName(
        match["tag"], architecture, encoder or None, match["phase"], match["timestamp"]
    )


def run_dir_name(tag: str, model: str, phase: str, timestamp: str) -> str:
    return f"{tag}-{model}_{phase}_{timestamp}"


def parse_checkpoint_name(name: str) -> CheckpointName:
    """Parse a checkpoint file name (with or without ``.ckpt``).

    The format is decided by the name's shape alone; an epoch or step beyond
    :data:`MAX_COUNTER` is None, as is a metric value that is not finite or a metric name that
    is not valid text.
    """
    stem = name[: -len(".ckpt")] if name.endswith(".ckpt") else name
    if m := _SCHEME.match(stem):
        return CheckpointName("scheme", _counter(m["epoch"]), _counter(m["step"]))
    if m := _LAST.match(stem):
        return CheckpointName("last")
    if m := _BEST.match(stem):
        value = float(m["value"])
        return CheckpointName(
            "best",
            metric=m["metric"] if _is_text(m["metric"]) else None,
            metric_value=value if math.isfinite(value) else None,
        )
    if m := _LEGACY_DOUBLE.match(stem):
        return CheckpointName(
            "legacy_double", _counter(m["epoch"]), _counter(m["step"]), timestamp=m["timestamp"]
        )
    if m := _LEGACY.match(stem):
        return CheckpointName(
            "legacy", _counter(m["epoch"]), _counter(m["step"]), timestamp=m["timestamp"]
        )
    if m := _EPOCH_ONLY.match(stem):
        return CheckpointName("epoch_only", _counter(m["epoch"]))
    if m := _LIGHTNING.search(stem):
        return CheckpointName("lightning", _counter(m["epoch"]), _counter(m["step"]))
    return CheckpointName("unknown")


def _counter(digits: str | None) -> int | None:
    """ASCII digits as an int within 0..MAX_COUNTER, else None (the length is checked first:
    int() of thousands of digits is slow, and beyond 4,300 raises)."""
    if digits is None:
        return None
    significant = digits.lstrip("0") or "0"
    if len(significant) > len(str(MAX_COUNTER)):
        return None
    value = int(significant)
    return value if value <= MAX_COUNTER else None


def _is_text(value: str) -> bool:
    """Whether a name encodes as UTF-8 (os.fsdecode turns undecodable bytes into lone surrogates,
    which neither the index nor a sidecar can store)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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


def experiment_dir_of(ckpt_path: str | Path) -> Path:
    """The folder that names a checkpoint's experiment: its run directory
    (:func:`run_dir_of`), above Lightning's ``lightning_logs/version_N`` when the checkpoint is
    in that layout."""
    run_dir = run_dir_of(ckpt_path)
    if re.fullmatch(r"version_[0-9]+", run_dir.name) and run_dir.parent.name == "lightning_logs":
        return run_dir.parent.parent
    return run_dir
