"""What a W&B run says, whichever way it was read: :class:`WandbRun` and its step index.

Metric values for a checkpoint come from the run *history* at the checkpoint's step
(:meth:`WandbRun.checkpoint_metrics`), never from the summary, which holds the last step's values.

Lightning's ``WandbLogger`` logs ``trainer/global_step`` as the count of batches that stepped
*before* the current one is counted: the metrics of the training batch and the validation that
precede a checkpoint saved at ``global_step`` N are logged with ``trainer/global_step`` N - 1.
:meth:`WandbRun.checkpoint_metrics` accounts for that when the run carries the logger's
``define_metric("*", step_metric="trainer/global_step")``; :meth:`WandbRun.history_at_step` is the
plain lookup by logged step.

The model names a run config gives come from the one mapper,
:func:`ckpt_index.sources.config_fields.model_fields_from_config` (re-exported by the package).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckpt_index.sources.config_fields import is_name
from ckpt_index.storable import as_float, finite_float

logger = logging.getLogger("ckpt_index.wandb")

GLOBAL_STEP_KEY = "trainer/global_step"
#: History keys that are bookkeeping, not metrics.
_NOT_METRICS = frozenset({"_step", "_runtime", "_timestamp", "epoch", GLOBAL_STEP_KEY})

#: Step x metric values kept from one run's history (about 100 bytes each in memory).
MAX_HISTORY_VALUES = 2_000_000

_warned: set[str] = set()


def warn_once(key: str, message: str, *args: Any) -> None:
    """Log ``message`` the first time ``key`` is met in this process (one warning per cause)."""
    if key not in _warned:
        _warned.add(key)
        logger.warning(message, *args)


def user_config(config: Any) -> dict[str, Any]:
    """A run config without W&B's own keys: every top-level key starting with ``_`` (``_wandb``,
    ``_name``, ...) is W&B's bookkeeping, never the user's."""
    if not isinstance(config, dict):
        return {}
    return {k: v for k, v in config.items() if not (isinstance(k, str) and k.startswith("_"))}


def run_path_of(entity: str | None, project: str | None, run_id: str) -> str | None:
    """``entity/project/run_id`` (or ``project/run_id``) for the W&B API; None without a project."""
    if not project:
        return None
    return "/".join(p for p in (entity, project, run_id) if p)


def clean_name(value: Any) -> str | None:
    """``value`` when it is a usable name (see :func:`~ckpt_index.sources.hydra.is_name`)."""
    return value if is_name(value) else None


@dataclass
class WandbRun:
    """What a W&B run says: config, summary, and history indexed by step.

    ``config`` is the plain nested run config without W&B's own keys (:func:`user_config`: none
    starting with ``_``); ``summary`` the final
    summary, for display only (never a checkpoint's metric values). ``source`` is ``files``,
    ``log``, ``files+log``, ``api``, ``cache`` or ``none``; ``warnings`` lists problems met while
    reading (a damaged log, wandb not importable). Treat instances as read-only:
    :func:`~ckpt_index.sources.wandb.files.read_run` may hand the same history to several callers.
    """

    run_id: str
    project: str | None = None
    entity: str | None = None
    run_dir: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    #: True when the run was logged by Lightning's WandbLogger (its define_metric on
    #: trainer/global_step).
    lightning_steps: bool = False
    source: str = "none"
    warnings: list[str] = field(default_factory=list)
    #: logged step (trainer/global_step, else _step) -> merged numeric metrics of its rows.
    history: dict[int, dict[str, float]] = field(default_factory=dict, repr=False)

    @property
    def run_path(self) -> str | None:
        return run_path_of(self.entity, self.project, self.run_id)

    @property
    def steps(self) -> list[int]:
        return sorted(self.history)

    def history_at_step(self, step: int) -> dict[str, float]:
        """Numeric metrics of the history rows logged at ``step``, merged (later rows win).

        Rows are matched on ``trainer/global_step``, or on ``_step`` when no row has it.
        Bookkeeping keys (``_step``, ``_runtime``, ``_timestamp``, ``epoch``,
        ``trainer/global_step``) are left out.
        """
        return dict(self.history.get(int(step), {}))

    def checkpoint_metrics(self, global_step: int) -> dict[str, float]:
        """The history metrics that belong to a checkpoint saved at ``global_step``.

        For a run logged by Lightning's WandbLogger these are the rows at ``global_step - 1``
        (Lightning logs the batch and the validation that precede a save under the step count
        from before that batch); otherwise the rows at ``global_step``. Never the summary.
        """
        step = int(global_step) - 1 if self.lightning_steps else int(global_step)
        return self.history_at_step(step)


def _step_value(value: Any) -> int | None:
    """A logged step: a finite number with an integer value, else None."""
    number = finite_float(value)
    if number is None or not number.is_integer():
        return None
    return int(number)


class HistoryIndex:
    """Builds the step -> metrics index from history rows as they stream by.

    Rows with ``trainer/global_step`` are indexed by it; while no row has it, rows are indexed by
    ``_step``. Past :data:`MAX_HISTORY_VALUES` stored values (a step counts as one) later rows
    are ignored and :attr:`full` is set.
    """

    def __init__(self) -> None:
        self.by_global_step: dict[int, dict[str, float]] = {}
        self.by_step: dict[int, dict[str, float]] = {}
        #: Each metric name is stored once, however many rows repeat it.
        self._names: dict[str, str] = {}
        self.values = 0
        self.limit = MAX_HISTORY_VALUES
        self.full = False

    def add(self, row: dict[str, Any]) -> None:
        if self.full:
            return
        names = self._names
        metrics = {}
        for key, value in row.items():
            if not isinstance(key, str) or key in _NOT_METRICS or key.startswith("_"):
                continue
            number = as_float(value)
            if number is not None:
                metrics[names.setdefault(key, key)] = number
        global_step = _step_value(row.get(GLOBAL_STEP_KEY))
        if global_step is not None:
            index, step = self.by_global_step, global_step
        elif not self.by_global_step:
            index, maybe_step = self.by_step, _step_value(row.get("_step"))
            if maybe_step is None:
                return
            step = maybe_step
        else:
            return
        target = index.get(step)
        if target is None:
            target = index[step] = {}
            self.values += 1  # a step costs about as much as a value
        before = len(target)
        target.update(metrics)
        self.values += len(target) - before
        if self.values > self.limit:
            self.full = True

    def result(self) -> dict[int, dict[str, float]]:
        return self.by_global_step if self.by_global_step else self.by_step


def uses_lightning_steps(metric_defs: Any) -> bool:
    """Whether W&B's stored metric definitions (config ``_wandb.m``) step on trainer/global_step.

    Each definition is a MetricRecord encoded by field number: 1 name, 2 glob name, 4 step
    metric, 5 step metric index (1-based position of the step metric's own definition).
    """
    if not isinstance(metric_defs, list):
        return False
    defs = [{str(k): v for k, v in d.items()} for d in metric_defs if isinstance(d, dict)]
    names = [d.get("1") for d in defs]
    index = names.index(GLOBAL_STEP_KEY) + 1 if GLOBAL_STEP_KEY in names else None
    return any(
        d.get("4") == GLOBAL_STEP_KEY or (index is not None and d.get("5") == index) for d in defs
    )
