"""UniqueModelCheckpoint: a ModelCheckpoint that names runs and checkpoints by the scheme
``<tag>-<model>_<phase>_<timestamp>/checkpoints/epoch-XX_step-XXXXXX.ckpt``, which the path-name
fallback (:mod:`ckpt_index.sources.naming`) reads back."""

from __future__ import annotations

import datetime as _dt
import math
import os
import re
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor
from typing_extensions import override

from ckpt_index.lightning._hparams import model_slug, slug
from ckpt_index.sources.naming import (
    TIMESTAMP_FORMAT,
    best_checkpoint_name,
    parse_run_dir,
    run_dir_name,
)

TAG_ENV_VAR = "EXPERIMENT_TAG"
_TIMESTAMP = re.compile(r"^\d{8}_\d{6}$")
_PHASE = re.compile(r"^[A-Za-z]+$")
_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9_.]+")


class UniqueModelCheckpoint(ModelCheckpoint):
    r"""A ``ModelCheckpoint`` that names runs and checkpoints by the ckpt-index scheme.

    Checkpoints go to
    ``<outputs_dir>/<experiment_tag>-<model>_<phase>_<YYYYMMDD_HHMMSS>/checkpoints/``
    as ``epoch-XX_step-XXXXXX.ckpt``, with ``last.ckpt`` for ``save_last`` and, when a metric is
    monitored, a ``best-<metric>-X.XXXX.ckpt`` link to the best checkpoint so far (``save_best``).
    ``<model>`` is ``<architecture>-<encoder>`` from the LightningModule's hparams (see
    :class:`~ckpt_index.lightning.MetadataCallback`) unless ``model_name`` is given. The
    ``EXPERIMENT_TAG`` environment variable overrides ``experiment_tag``. Resuming a fit from a
    checkpoint of a run with the same tag, model and phase continues in that run's directory.

    It writes no metadata itself: add a :class:`~ckpt_index.lightning.MetadataCallback` to the
    trainer, which also covers the ``best-*`` link and removes it when a better one replaces it.

    Args:
        dirpath: Directory for the checkpoints; given, it replaces the scheme's run directory
            (file names still follow the scheme).
        filename: Lightning filename template; default ``epoch-{epoch:02d}_step-{step:06d}``.
        experiment_tag: First part of the run directory name (default ``exp``); the
            ``EXPERIMENT_TAG`` environment variable wins over it. Characters other than letters,
            digits, ``_`` and ``.`` (dashes included) become ``_`` so the name parses back.
        model_name: The ``<model>`` part; default from the hparams, else the module's class name.
        training_phase: The ``<phase>`` part, letters only (``training``, ``finetuning``, ...).
        outputs_dir: Parent of run directories; default ``<trainer.default_root_dir>/outputs``.
        timestamp: The ``YYYYMMDD_HHMMSS`` part; default the time of ``setup`` on global rank 0.
        save_best: Keep a ``best-<metric>-<score>.ckpt`` link to ``best_model_path`` when
            ``monitor`` is set (a copy where symbolic links are not allowed).
        \**kwargs: Passed to ``ModelCheckpoint`` (``monitor``, ``mode``, ``save_top_k``,
            ``save_last``, ``every_n_epochs``, ...).

    Example::

        from lightning.pytorch import Trainer
        from ckpt_index.lightning import MetadataCallback, UniqueModelCheckpoint

        checkpoint = UniqueModelCheckpoint(
            experiment_tag="ocr_baseline_v1", monitor="val/hmean", mode="max",
            save_top_k=3, save_last=True,
        )
        trainer = Trainer(callbacks=[checkpoint, MetadataCallback()])
        trainer.fit(model)
        # outputs/ocr_baseline_v1-dbnet-resnet18_training_20251015_120000/checkpoints/
        #     epoch-22_step-001932.ckpt  last.ckpt  best-hmean-0.8920.ckpt
    """

    SCHEME_FILENAME = "epoch-{epoch:02d}_step-{step:06d}"

    def __init__(
        self,
        dirpath: str | os.PathLike[str] | None = None,
        filename: str | None = None,
        *,
        experiment_tag: str | None = None,
        model_name: str | None = None,
        training_phase: str = "training",
        outputs_dir: str | os.PathLike[str] | None = None,
        timestamp: str | None = None,
        save_best: bool = True,
        **kwargs: Any,
    ) -> None:
        call = "UniqueModelCheckpoint"
        for name, value in (("experiment_tag", experiment_tag), ("model_name", model_name)):
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ValueError(
                    f"{call}({name}={value!r}): {name} must be a non-empty string or None"
                )
        if not isinstance(training_phase, str) or not _PHASE.match(training_phase):
            raise ValueError(
                f"{call}(training_phase={training_phase!r}): training_phase must be letters only, "
                "e.g. 'training' or 'finetuning'"
            )
        if timestamp is not None and (
            not isinstance(timestamp, str) or not _TIMESTAMP.match(timestamp)
        ):
            raise ValueError(
                f"{call}(timestamp={timestamp!r}): timestamp must look like 20251015_120000"
            )
        if not isinstance(save_best, bool):
            raise ValueError(f"{call}(save_best={save_best!r}): save_best must be True or False")
        if filename is None:
            filename = self.SCHEME_FILENAME
            kwargs.setdefault("auto_insert_metric_name", False)
        super().__init__(
            dirpath=None if dirpath is None else os.fspath(dirpath), filename=filename, **kwargs
        )
        self.experiment_tag = experiment_tag
        self.model_name = model_name
        self.training_phase = training_phase
        self.outputs_dir = outputs_dir
        self.timestamp = timestamp
        self.save_best = save_best
        self._scheme_dir = dirpath is None
        self._best_link_path = ""
        self._best_link_target = ""

    @property
    def run_dir(self) -> str | None:
        """The run directory (the parent of ``checkpoints/``) once ``setup`` has chosen it."""
        if self.dirpath is None:
            return None
        path = Path(self.dirpath)
        return str(path.parent if path.name == "checkpoints" else path)

    @property
    def best_link_path(self) -> str:
        """Path of the current ``best-<metric>-<score>.ckpt`` link (empty before the first)."""
        return self._best_link_path

    def scheme_run_dir_name(self, pl_module: LightningModule) -> str:
        """``<tag>-<model>_<phase>_<timestamp>`` for this run (a new timestamp unless pinned)."""
        tag = os.environ.get(TAG_ENV_VAR) or self.experiment_tag or "exp"
        # A dash separates the tag from the model, so it may not appear inside either.
        tag = _TAG_UNSAFE.sub("_", tag.strip()).strip("_.") or "exp"
        model = None
        if self.model_name:
            # "<architecture>-<encoder>": one dash at most, or the name would not parse back.
            architecture, _, encoder = self.model_name.partition("-")
            model = "-".join(part for part in (slug(architecture), slug(encoder)) if part)
        if not model:
            model = model_slug(getattr(pl_module, "hparams", None))
        if not model:
            model = slug(type(pl_module).__name__.lower()) or "model"
        timestamp = self.timestamp or _dt.datetime.now().strftime(TIMESTAMP_FORMAT)
        return run_dir_name(tag, model, self.training_phase, timestamp)

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._scheme_dir and self.dirpath is None:
            outputs = self.outputs_dir or os.path.join(trainer.default_root_dir, "outputs")
            run_dir = os.path.join(
                os.path.abspath(os.fspath(outputs)), self.scheme_run_dir_name(pl_module)
            )
            # Every rank computes a name; ModelCheckpoint.setup broadcasts global rank 0's.
            self.dirpath = os.path.join(run_dir, "checkpoints")
        super().setup(trainer, pl_module, stage)

    @override
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["best_link_path"] = self._best_link_path
        state["best_link_target"] = self._best_link_target
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        previous = state_dict.get("dirpath")
        if self._scheme_dir and previous and previous != self.dirpath and self._same_run(previous):
            self.dirpath = previous  # resume in place: top-k bookkeeping and last.ckpt carry on
        super().load_state_dict(state_dict)
        if self.dirpath == previous:
            self._best_link_path = state_dict.get("best_link_path", "")
            self._best_link_target = state_dict.get("best_link_target", "")

    def _same_run(self, previous_dirpath: str) -> bool:
        """Whether a resumed checkpoint's directory is a run of the same tag, model and phase."""
        previous = Path(previous_dirpath)
        if self.dirpath is None or previous.name != "checkpoints" or not previous.is_dir():
            return False
        old, new = (
            parse_run_dir(previous.parent.name),
            parse_run_dir(Path(self.dirpath).parent.name),
        )
        return (
            old is not None
            and new is not None
            and (old.tag, old.model, old.phase) == (new.tag, new.model, new.phase)
        )

    @override
    def _save_topk_checkpoint(
        self, trainer: Trainer, monitor_candidates: dict[str, Tensor]
    ) -> None:
        super()._save_topk_checkpoint(trainer, monitor_candidates)
        if self.save_best and self.monitor is not None:
            self._update_best_link(trainer)

    def _update_best_link(self, trainer: Trainer) -> None:
        """Point ``best-<metric>-<score>.ckpt`` at ``best_model_path`` (runs on every rank)."""
        best, score = self.best_model_path, self.best_model_score
        if not best or score is None or self.dirpath is None:
            return
        value = float(score)
        if not math.isfinite(value):
            return
        assert self.monitor is not None
        link = os.path.join(self.dirpath, best_checkpoint_name(self.monitor, value))
        if link == self._best_link_path and best == self._best_link_target:
            return
        previous = self._best_link_path
        self._link_checkpoint(trainer, best, link)
        self._best_link_path, self._best_link_target = link, best
        if (
            previous
            and previous != link
            and self._should_remove_checkpoint(trainer, previous, link)
        ):
            if trainer.is_global_zero and os.path.islink(previous) and not os.path.exists(previous):
                # Its target fell out of the top k (save_top_k=1); fsspec's rm skips dangling links.
                os.unlink(previous)
            self._remove_checkpoint(trainer, previous)
