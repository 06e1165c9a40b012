"""MetadataCallback: a sidecar and an index row for every checkpoint a ModelCheckpoint writes."""

from __future__ import annotations

import datetime as _dt
import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from typing_extensions import override

from ckpt_index.index.records import FileState
from ckpt_index.lightning._failures import FailureLog
from ckpt_index.lightning._hparams import model_section
from ckpt_index.lightning._index_writer import Alias, Delete, IndexWriter, Upsert, is_link_to
from ckpt_index.lightning._metrics import metrics_section
from ckpt_index.lightning._params import (
    hydra_overrides,
    load_hydra_config,
    run_hyperparameters,
)
from ckpt_index.lightning._run_info import default_exp_name, hydra_config_path, wandb_run_id
from ckpt_index.sidecar.files import load_metadata, save_metadata, sidecar_path_for
from ckpt_index.sidecar.schema import SCHEMA_VERSION, CheckpointMetadataV1
from ckpt_index.vocabulary import PHASES

log = logging.getLogger(__name__)

#: ModelCheckpoint methods wrapped per instance: each returns once the file operation is done.
_HOOKED = ("_save_checkpoint", "_link_checkpoint", "_remove_checkpoint")
#: The attribute naming the callback that installed a ModelCheckpoint wrapper (see _unhook).
_HOOK_OWNER = "__ckpt_index_hook__"
_RECENT = 64


@dataclass(frozen=True)
class _RunFacts:
    exp_name: str
    hydra_config_path: str | None
    #: The sidecar's ``hyperparameters`` and ``hydra_overrides`` (see :mod:`._params`).
    hyperparameters: dict[str, Any] | None = None
    hydra_overrides: list[str] | None = None


class MetadataCallback(Callback):
    r"""Write ``X.metadata.yaml`` beside every checkpoint a ``ModelCheckpoint`` saves, and index it.

    Every checkpoint file any ``ModelCheckpoint`` of the trainer writes (top-k, ``every_n_epochs``,
    ``every_n_train_steps``, ``save_last=True`` and ``save_last="link"``) gets a sidecar once the
    file exists, and its row is upserted into the ckpt-index database. When a ``ModelCheckpoint``
    deletes a checkpoint that fell out of the top k, its sidecar and row go too.

    The sidecar holds the epoch, global step, ``max_epochs`` and phase; metrics matched by name
    from ``trainer.callback_metrics`` (``precision``, ``recall``, ``hmean``/``f1``, validation loss;
    all of them under ``additional_metrics``); the model's architecture, encoder, decoder, head
    and loss from the LightningModule's ``hparams`` (``unknown`` when absent); the saving
    ``ModelCheckpoint``'s ``monitor``, ``mode``, ``save_top_k`` and ``save_last``; the run's
    ``.hydra/config.yaml`` and the ``WandbLogger``'s run id when there are any; and (schema
    1.1) the run's ``hyperparameters``: the Hydra config (interpolations kept as text) overlaid by
    the DataModule's and then the LightningModule's ``hparams``, as plain YAML data within the
    index's bounds, with the run's ``hydra_overrides`` (``.hydra/overrides.yaml``). They are
    computed once per fit and run directory, not per checkpoint.

    Only global rank 0 writes. Sidecars are written on the training thread (about a millisecond);
    index writes run on a background thread and are flushed when ``fit`` ends. Metadata problems
    never stop training: the first is logged as a warning, later ones at DEBUG level. A sidecar
    that was written stays the source of truth even when the index could not be updated;
    ``ckpt-index sync`` catches up.

    Args:
        exp_name: Experiment name recorded in every sidecar. Default: the run directory's name
            (the folder holding ``checkpoints/``), or ``<logger name>/<version>`` in a logger's
            own directory layout.
        training_phase: ``"training"``, ``"validation"`` or ``"finetuning"``.
        db: Path or SQLAlchemy URL of the index; ``None`` for the standard resolution
            (``$CKPT_INDEX_DB``, else ``./ckpt_index.db``); ``False`` writes sidecars only.
        busy_timeout: Seconds an index write waits for a locked SQLite database before that batch
            is given up (it never blocks training; ``fit`` waits for the last batch at the end).

    Example::

        from lightning.pytorch import Trainer
        from lightning.pytorch.callbacks import ModelCheckpoint
        from ckpt_index.lightning import MetadataCallback

        trainer = Trainer(callbacks=[
            ModelCheckpoint(monitor="val/hmean", mode="max", save_top_k=3, save_last=True),
            MetadataCallback(exp_name="dbnet-resnet50", db="ckpt_index.db"),
        ])
        trainer.fit(model)
        # then: ckpt-index query --best-by hmean
    """

    def __init__(
        self,
        exp_name: str | None = None,
        training_phase: str = "training",
        db: str | os.PathLike[str] | None | bool = None,
        *,
        busy_timeout: float = 5.0,
    ) -> None:
        super().__init__()
        if exp_name is not None and (not isinstance(exp_name, str) or not exp_name.strip()):
            raise ValueError(
                f"MetadataCallback(exp_name={exp_name!r}): exp_name must be a non-empty string "
                "or None"
            )
        if training_phase not in PHASES:
            raise ValueError(
                f"MetadataCallback(training_phase={training_phase!r}): training_phase must be one "
                f"of {', '.join(repr(p) for p in PHASES)}"
            )
        if db is True or not (db is None or db is False or isinstance(db, (str, os.PathLike))):
            raise ValueError(
                f"MetadataCallback(db={db!r}): db must be a path, a SQLAlchemy URL, None "
                "(standard resolution) or False (no index)"
            )
        if (
            isinstance(busy_timeout, bool)
            or not isinstance(busy_timeout, (int, float))
            or busy_timeout < 0
        ):
            raise ValueError(
                f"MetadataCallback(busy_timeout={busy_timeout!r}): busy_timeout must be a number "
                "of seconds >= 0"
            )
        self.exp_name = exp_name
        self.training_phase = training_phase
        self.db = db
        self.busy_timeout = float(busy_timeout)
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._hooked: dict[int, tuple[ModelCheckpoint, dict[str, Any]]] = {}
        self._writer: IndexWriter | None = None
        self._failures = FailureLog(log)
        self._recent: OrderedDict[str, CheckpointMetadataV1] = OrderedDict()
        self._run_facts: dict[tuple[int, str], _RunFacts] = {}
        self._model: dict[str, Any] | None = None
        self._hparams: tuple[Any, Any] | None = None

    # Runtime state (threads, wrapped methods) stays in the process that made it: ddp_spawn
    # pickles the trainer's callbacks into its workers.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in (
            "_hooked",
            "_writer",
            "_failures",
            "_recent",
            "_run_facts",
            "_model",
            "_hparams",
        ):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    # -- Lightning hooks ------------------------------------------------------------------------

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._failures = FailureLog(log)
        self._model = None
        self._hparams = None
        self._run_facts.clear()
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint):
                self._hook(callback)

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        for callback, originals in list(self._hooked.values()):
            self._unhook(callback, originals)
        self._hooked.clear()
        self._flush()
        self._failures.summary()

    @override
    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        # teardown() is not called after an exception. The wrappers stay in place because the
        # ModelCheckpoints run their own on_exception after this one (save_on_exception); such a
        # save flushes the index itself (see _after_save).
        self._flush()

    # -- Wrapping ModelCheckpoint ---------------------------------------------------------------

    def _hook(self, callback: ModelCheckpoint) -> None:
        """Wrap the file operations of one ModelCheckpoint instance (idempotent)."""
        if id(callback) in self._hooked:
            return
        originals = {name: callback.__dict__.get(name, _MISSING) for name in _HOOKED}
        save, link, remove = (getattr(callback, name) for name in _HOOKED)

        def _save_checkpoint(trainer: Trainer, filepath: str) -> None:
            save(trainer, filepath)
            if trainer.is_global_zero:
                self._guard(
                    "write the sidecar of", filepath, self._after_save, trainer, callback, filepath
                )

        def _link_checkpoint(trainer: Trainer, filepath: str, linkpath: str) -> None:
            link(trainer, filepath, linkpath)
            if trainer.is_global_zero and os.path.abspath(filepath) != os.path.abspath(linkpath):
                self._guard(
                    "write the sidecar of",
                    linkpath,
                    self._after_link,
                    trainer,
                    callback,
                    filepath,
                    linkpath,
                )

        def _remove_checkpoint(trainer: Trainer, filepath: str) -> None:
            remove(trainer, filepath)
            if trainer.is_global_zero:
                self._guard("remove the sidecar of", filepath, self._after_remove, filepath)

        for wrapper in (_save_checkpoint, _link_checkpoint, _remove_checkpoint):
            setattr(wrapper, _HOOK_OWNER, self)
            setattr(callback, wrapper.__name__, wrapper)
        self._hooked[id(callback)] = (callback, originals)

    def _unhook(self, callback: ModelCheckpoint, originals: dict[str, Any]) -> None:
        for name, original in originals.items():
            current = callback.__dict__.get(name)
            if getattr(current, _HOOK_OWNER, None) is not self:
                continue  # someone wrapped on top of us; leave their wrapper in place
            if original is _MISSING:
                del callback.__dict__[name]
            else:
                callback.__dict__[name] = original

    def _guard(self, action: str, filepath: Any, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - metadata must never fail training
            self._failures.report(f"could not {action} {filepath}", exc)

    # -- After ModelCheckpoint's file operations (global rank 0) ----------------------------------

    def _after_save(self, trainer: Trainer, callback: ModelCheckpoint, filepath: str) -> None:
        path = _local_path(filepath)
        meta = self.build_metadata(trainer, callback, path)
        self._publish(meta, path, is_last=self._is_last_copy(path, meta))
        if trainer.interrupted:  # a save_on_exception checkpoint: fit ends without teardown()
            self._flush()

    def _is_last_copy(self, path: str, meta: CheckpointMetadataV1) -> bool:
        """A ``last*.ckpt`` saved at the step of a checkpoint beside it, with its bytes (as a
        sync decides: :func:`ckpt_index.sync.scan.is_copy`)."""
        if not os.path.basename(path).startswith("last"):
            return False
        from ckpt_index.sync.scan import is_copy

        step, directory = meta.training.global_step, os.path.dirname(path)
        same_step = [
            other
            for other, seen in self._recent.items()
            if other != path
            and os.path.dirname(other) == directory
            and seen.training.global_step == step
            and not os.path.islink(other)
        ]
        return bool(same_step) and is_copy(path, same_step)

    def _after_link(
        self, trainer: Trainer, callback: ModelCheckpoint, target: str, linkpath: str
    ) -> None:
        """``last.ckpt`` (or a ``best-*`` link) now points at ``target``: describe the target."""
        target, link = _local_path(target), _local_path(linkpath)
        source = self._recent.get(target)
        if source is None:
            try:
                source = load_metadata(target)
            except Exception:  # noqa: BLE001 - an unreadable sidecar: describe the present state
                source = None
        if source is None:
            meta = self.build_metadata(trainer, callback, link)
        else:
            meta = source.model_copy(update={"checkpoint_path": link, "created_at": _now()})
        # A link is an alias of its target (one checkpoint, one row); where links are not
        # allowed Lightning copies the file, and a last*.ckpt copy is marked is_last.
        alias = is_link_to(link, target)
        is_last = not alias and os.path.basename(link).startswith("last")
        self._publish(meta, link, alias_of=target if alias else None, is_last=is_last)

    def _after_remove(self, filepath: str) -> None:
        path = _local_path(filepath)
        if os.path.lexists(path):
            return  # the checkpoint is still there, so is its metadata
        self._recent.pop(path, None)
        try:
            os.unlink(sidecar_path_for(path))
        except FileNotFoundError:
            pass
        if self.db is not False:
            self._index().submit(Delete(path))

    def _publish(
        self,
        meta: CheckpointMetadataV1,
        path: str,
        *,
        alias_of: str | None = None,
        is_last: bool = False,
    ) -> None:
        # The checkpoint file is rewritten in place (last.ckpt, a reused name), so is its sidecar.
        sidecar = save_metadata(meta, path, force=True, durable=False)
        self._recent[path] = meta
        self._recent.move_to_end(path)
        while len(self._recent) > _RECENT:
            self._recent.popitem(last=False)
        if self.db is False:
            return
        if alias_of is not None:
            self._index().submit(Alias(alias_of, path))
            return
        ckpt_stat, sidecar_stat = os.stat(path), os.stat(sidecar)
        self._index().submit(
            Upsert(
                meta,
                path,
                str(sidecar),
                FileState(ckpt_stat.st_size, ckpt_stat.st_mtime_ns),
                FileState(sidecar_stat.st_size, sidecar_stat.st_mtime_ns),
                is_last=is_last,
            )
        )

    def _index(self) -> IndexWriter:
        if self._writer is None:
            db = None if self.db is False else self.db
            self._writer = IndexWriter(
                db, busy_timeout=self.busy_timeout, report=self._failures.report
            )
        return self._writer

    def _flush(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            # A locked index may hold the batch in flight and the last one for a busy timeout each.
            writer.close(timeout=2 * self.busy_timeout + 10)

    # -- Building the metadata ------------------------------------------------------------------

    def build_metadata(
        self, trainer: Trainer, callback: ModelCheckpoint, ckpt_path: str
    ) -> CheckpointMetadataV1:
        """The metadata of the checkpoint ``callback`` just wrote at ``ckpt_path`` (absolute)."""
        facts = self._facts(trainer, callback, ckpt_path)
        if self._model is None:
            self._model = model_section(getattr(trainer.lightning_module, "hparams", None))
        max_epochs = trainer.max_epochs
        document = {
            "schema_version": SCHEMA_VERSION,
            "checkpoint_path": ckpt_path,
            "exp_name": facts.exp_name,
            "created_at": _now(),
            "training": {
                "epoch": trainer.current_epoch,
                "global_step": trainer.global_step,
                "training_phase": self.training_phase,
                "max_epochs": max_epochs
                if isinstance(max_epochs, int) and max_epochs >= -1
                else None,
            },
            "model": self._model,
            "metrics": metrics_section(trainer.callback_metrics),
            "checkpointing": {
                "monitor": callback.monitor,
                "mode": callback.mode,
                "save_top_k": callback.save_top_k,
                "save_last": bool(callback.save_last),
            },
            "hydra_config_path": facts.hydra_config_path,
            "wandb_run_id": wandb_run_id(trainer),
            "hyperparameters": facts.hyperparameters,
            "hydra_overrides": facts.hydra_overrides,
        }
        return CheckpointMetadataV1.model_validate(document)

    def _facts(self, trainer: Trainer, callback: ModelCheckpoint, ckpt_path: str) -> _RunFacts:
        key = (id(callback), os.path.dirname(ckpt_path))
        facts = self._run_facts.get(key)
        if facts is None:
            config_path = hydra_config_path(ckpt_path)
            hyperparameters, overrides = self._hyperparameters(trainer, config_path)
            facts = _RunFacts(
                exp_name=self.exp_name or default_exp_name(trainer, ckpt_path),
                hydra_config_path=config_path,
                hyperparameters=hyperparameters,
                hydra_overrides=overrides,
            )
            self._run_facts[key] = facts
        return facts

    def _hyperparameters(
        self, trainer: Trainer, config_path: str | None
    ) -> tuple[dict[str, Any] | None, list[str] | None]:
        """The run's hyperparameters and Hydra overrides; problems are reported, never raised."""
        try:
            if self._hparams is None:
                module = trainer.lightning_module
                datamodule = getattr(trainer, "datamodule", None)
                self._hparams = (
                    getattr(module, "hparams", None) if module is not None else None,
                    getattr(datamodule, "hparams", None) if datamodule is not None else None,
                )
            config, problem = load_hydra_config(config_path)
            if problem is not None:
                log.warning("ckpt-index: hyperparameters without the Hydra config: %s", problem)
            hyperparameters, warnings = run_hyperparameters(
                self._hparams[0], self._hparams[1], config
            )
            for warning in warnings:  # what the index would not keep (its bounds)
                log.warning("ckpt-index: %s", warning)
            return hyperparameters, hydra_overrides(config_path)
        except Exception as exc:  # noqa: BLE001 - metadata must never fail training
            self._failures.report("could not collect the hyperparameters", exc)
            return None, None


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()


def _local_path(filepath: Any) -> str:
    text = os.fspath(filepath)
    if "://" in text and not text.startswith("file://"):
        raise ValueError("sidecars are written for local checkpoint paths only")
    return os.path.abspath(text.removeprefix("file://"))


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")
