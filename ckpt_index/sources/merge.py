"""Metadata for checkpoints without a sidecar, merged field by field.

Each field comes from the most specific source that has it:

- facts of the checkpoint itself (epoch, global_step, its monitored score, stored metrics) from the
  checkpoint, read safely (``checkpoint_reader``: no code runs, no tensor is read);
- model and run facts (exp_name, architecture, encoder, decoder, head, loss, the encoder's
  flags ``encoder_pretrained`` / ``encoder_frozen``, ModelCheckpoint's ``monitor``, ``mode``,
  ``save_top_k`` and ``save_last``) from the checkpoint's ModelCheckpoint state, its
  hyper_parameters, then the Hydra config, then the W&B run config, then path patterns and
  state-dict inference; without another source, the experiment is named after its run folder;
- metric values the checkpoint lacks from the W&B history at the checkpoint's global step (never
  the run summary, whose values belong to the last step);
- hyperparameters (:attr:`Inferred.params`), flattened by :func:`ckpt_index.hyperparams.flatten`
  and merged per name: the checkpoint's ``hyper_parameters`` (over its
  ``datamodule_hyper_parameters``, as Lightning merges them for loggers), then the run's Hydra
  config (unresolved ``${...}`` kept as text), then the W&B run config (no key starting with
  ``_``). Names set by the run's ``.hydra/overrides.yaml`` are marked ``overridden``.

A value no source gives stays empty: no default is ever recorded as a fact. :class:`Inferred`
records where each field came from.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckpt_index import hyperparams
from ckpt_index.hyperparams import Param
from ckpt_index.sources.config_fields import clean_name
from ckpt_index.sources.naming import (
    experiment_dir_of,
    parse_checkpoint_name,
    parse_run_dir,
    run_dir_of,
)
from ckpt_index.storable import (
    INT_RANGES,
    MAX_METRIC_NAME,
    as_int,
    clean_text,
    finite_float,
    int_problem,
    show,
    text_problem,
)
from ckpt_index.vocabulary import MODES, PHASES, canonical_metrics, match_canonical

if TYPE_CHECKING:
    from ckpt_index.sources.wandb.online import AnswerCache

log = logging.getLogger("ckpt_index.sources.merge")

MODEL_FIELDS = ("exp_name", "architecture", "encoder", "decoder", "head", "loss")


@dataclass
class Inferred:
    """What the fallbacks found for one checkpoint."""

    checkpoint_path: str
    fields: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    #: field or ``metrics.<name>`` -> source (checkpoint, hydra, wandb, path, state_dict)
    sources: dict[str, str] = field(default_factory=dict)
    #: Why the checkpoint itself could not be read, if it could not.
    unreadable: str | None = None
    warnings: list[str] = field(default_factory=list)
    #: The pickle globals ``torch.load(weights_only=True)`` would refuse (None: not read).
    unsafe_globals: list[str] | None = None
    #: Hyperparameters by flattened name (:mod:`ckpt_index.hyperparams`), merged over sources.
    params: dict[str, Param] = field(default_factory=dict)
    #: The run's Hydra overrides (``.hydra/overrides.yaml``), when it has them.
    hydra_overrides: list[str] | None = None

    def set(self, name: str, value: Any, source: str) -> None:
        """Fill ``name`` unless a more specific source already did.

        Values come from untrusted files: one the index cannot store is ignored (out-of-range
        integers, non-finite numbers, a non-text name) or cleaned (text with NUL or lone
        surrogates), with a warning either way.
        """
        if value is None or name in self.fields:
            return
        value, problem = _storable(name, value)
        if problem:
            self.warnings.append(f"{name} from {source}: {problem}")
        if value is None:
            return
        self.fields[name] = value
        self.sources[name] = source

    def add_metrics(self, values: dict[Any, Any], source: str) -> None:
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if not isinstance(name, str):
                self.warnings.append(
                    f"metric {show(name)} from {source}: name is not text; ignored"
                )
                continue
            if len(name) > MAX_METRIC_NAME:
                self.warnings.append(
                    f"metric {show(name)} from {source}: name longer than "
                    f"{MAX_METRIC_NAME} characters; ignored"
                )
                continue
            if text_problem(name):
                self.warnings.append(
                    f"metric {show(name)} from {source}: name {text_problem(name)}; cleaned"
                )
                name = clean_text(name)
            if name in self.metrics:
                continue
            number = finite_float(value)
            if number is None:
                if isinstance(value, int):  # NaN and infinities are simply not values; this is odd
                    self.warnings.append(
                        f"metric {name!r} from {source}: {show(value)} is beyond "
                        "float range; ignored"
                    )
                continue
            self.metrics[name] = number
            self.sources[f"metrics.{name}"] = source

    @property
    def source(self) -> str:
        """The row's source: the most specific one that contributed anything."""
        used = set(self.sources.values())
        for name in ("checkpoint", "hydra", "wandb", "path", "state_dict"):
            if name in used:
                return name
        return "none"


def infer_metadata(
    ckpt_path: str | os.PathLike[str],
    *,
    wandb_online: bool = False,
    wandb_cache: AnswerCache | None = None,
) -> Inferred:
    """Everything the fallbacks can say about ``ckpt_path``; never raises for any file.

    Each source is one step: a step that fails costs its own fields and leaves a warning (the
    checkpoint's own reader: the file is ``unreadable``), and the others still run.
    """
    path = Path(ckpt_path)
    result = Inferred(str(path))
    contents = _read_checkpoint(path, result)
    hparams: dict[Any, Any] = {}
    #: source -> its parameters, in order of precedence (see :func:`_merge_params`).
    layers: dict[str, dict[str, Param]] = {}
    if contents is not None:
        _step(result, "reading the checkpoint's fields", _from_checkpoint, contents, result)
        if isinstance(contents.hyper_parameters, dict):
            hparams = contents.hyper_parameters
        _step(result, "checkpoint hyperparameters", _checkpoint_params, contents, result, layers)
    _step(result, "hyper_parameters", _from_config, hparams, result, "checkpoint")
    _step(result, "hydra config", _from_hydra, path, result, layers)
    _step(
        result,
        "W&B run",
        _from_wandb,
        path,
        result,
        hparams,
        layers,
        wandb_online=wandb_online,
        wandb_cache=wandb_cache,
    )
    _step(result, "hyperparameters", _merge_params, result, layers)
    _step(result, "path patterns", _from_path, path, result)
    # When the checkpoint was written: its file's mtime (a sidecar's created_at, had there been
    # one).
    _step(result, "file time", lambda: result.set("created_at", created_at_of(path), "file"))
    if "encoder" not in result.fields and contents is not None:
        _step(result, "state dict inference", _from_state_dict, contents, result)
    _step(result, "canonical metrics", _fill_canonical, result)
    return result


def _step(result: Inferred, what: str, func: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    try:
        func(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - one source's failure never costs the file's row
        result.warnings.append(f"{what} failed: {_describe(exc)}")


def _describe(exc: BaseException) -> str:
    """One clean line for an exception raised while reading an untrusted file."""
    try:
        text = f"{exc.__class__.__name__}: {exc}"
    except Exception:  # noqa: BLE001 - str() of an exception carrying any value
        text = exc.__class__.__name__
    text = clean_text(" ".join(text.split()))
    return text if len(text) <= 300 else text[:297] + "..."


def _read_checkpoint(path: Path, result: Inferred):
    from ckpt_index.sources.checkpoint.reader import CheckpointReadError, read_checkpoint

    try:
        # In this process: infer_metadata runs inside an isolated worker (ckpt_index.isolation).
        contents = read_checkpoint(path)
        result.unsafe_globals = list(contents.unsafe_globals)
        return contents
    except CheckpointReadError as exc:
        result.unreadable = clean_text(" ".join(str(exc.reason).split()))
    except Exception as exc:  # noqa: BLE001 - a reader bug must not stop a sync
        result.unreadable = _describe(exc)
    return None


def _from_checkpoint(contents: Any, result: Inferred) -> None:
    # What the reader left out (too large, too deep, out of range) is said on the row.
    result.warnings.extend(f"checkpoint: {clean_text(str(w))}" for w in contents.warnings or ())
    result.set("epoch", as_int(contents.epoch, minimum=0), "checkpoint")
    result.set("global_step", as_int(contents.global_step, minimum=0), "checkpoint")
    if contents.cleval_metrics:
        cleval = dict(contents.cleval_metrics)
        result.add_metrics(cleval, "checkpoint")
        # The seeds' most reliable figures: they fill the canonical slots before any logged name.
        for slot, value in canonical_metrics(cleval).items():
            result.set(slot, value, "checkpoint")
    for state in contents.checkpoint_callbacks or []:
        monitor, score = state.get("monitor"), state.get("current_score")
        if monitor is not None and not isinstance(monitor, str):
            # A crafted state: an int, list or dict is no metric name (and a list is no key).
            result.warnings.append(
                f"ModelCheckpoint monitor {show(monitor)} is not a metric "
                "name; ignored with its mode"
            )
            continue
        if monitor and isinstance(score, (int, float)):
            result.add_metrics({monitor: score}, "checkpoint")
        result.set("monitor", monitor, "checkpoint")
        mode = state.get("mode")
        if monitor and mode is not None:
            if isinstance(mode, str) and mode in ("min", "max"):
                result.set("mode", mode, "checkpoint")
            else:
                result.warnings.append(
                    f"ModelCheckpoint mode {show(mode)} is not min or max; ignored"
                )
        # Lightning's own state holds neither; a subclass's state (or its state key) may.
        result.set("save_top_k", state.get("save_top_k"), "checkpoint")
        save_last = state.get("save_last")
        result.set("save_last", True if save_last == "link" else save_last, "checkpoint")


def _fill_canonical(result: Inferred) -> None:
    for slot, name in match_canonical(result.metrics).items():
        result.set(slot, result.metrics[name], result.sources[f"metrics.{name}"])


def _from_config(config: dict[str, Any], result: Inferred, source: str) -> None:
    if not isinstance(config, dict):
        return
    from ckpt_index.sources.config_fields import settings_from_config
    from ckpt_index.sources.hydra import model_fields

    for name, value in {**model_fields(config), **settings_from_config(config)}.items():
        result.set(name, value, source)


def _flatten_into(
    layers: dict[str, dict[str, Param]],
    result: Inferred,
    config: Any,
    source: str,
    *,
    skip_private: bool = False,
) -> dict[str, Param]:
    """``config`` flattened (its bound warnings on the row), kept as ``source``'s layer."""
    params, warnings = hyperparams.flatten(config, source, skip_private=skip_private)
    result.warnings.extend(warnings)
    layers[source] = hyperparams.merge(layers.get(source, {}), params)
    return params


def _checkpoint_params(
    contents: Any, result: Inferred, layers: dict[str, dict[str, Param]]
) -> None:
    # The module's hparams win over the datamodule's (Lightning merges both for its loggers).
    for config in (contents.hyper_parameters, contents.datamodule_hyper_parameters):
        if config:
            _flatten_into(layers, result, config, "checkpoint")


#: Precedence of the sources of hyperparameters, per name: the first that has a name gives it.
PARAM_SOURCES = ("checkpoint", "hydra", "wandb")


def _merge_params(result: Inferred, layers: dict[str, dict[str, Param]]) -> None:
    """The sources' parameters merged per name into ``result.params``, marked ``overridden`` by
    the run's Hydra overrides, and bounded to :data:`~ckpt_index.hyperparams.MAX_PARAMS` in all."""
    merged = hyperparams.merge(*(layers[s] for s in PARAM_SOURCES if s in layers))
    marked = set(hyperparams.override_names(result.hydra_overrides or []))
    params: dict[str, Param] = {}
    dropped: list[str] = []
    for name, param in merged.items():
        if len(params) >= hyperparams.MAX_PARAMS:
            dropped.append(name)
            continue
        params[name] = (*param[:5], True) if name in marked and not param[5] else param
    if dropped:
        more = f" and {len(dropped) - 1} more" if len(dropped) > 1 else ""
        result.warnings.append(
            f"hyperparameters: more than {hyperparams.MAX_PARAMS} parameters from all sources: "
            f"dropped {show(dropped[0], 60)}{more}"
        )
    result.params = params


def _from_hydra(path: Path, result: Inferred, layers: dict[str, dict[str, Param]]) -> None:
    from ckpt_index.sidecar.files import SidecarError
    from ckpt_index.sources.hydra import find_hydra_config, load_config, load_overrides

    config_path = find_hydra_config(path)
    if config_path is None:
        return
    if config_path.parent.name == ".hydra":
        overrides_path = config_path.parent / "overrides.yaml"
        try:
            result.hydra_overrides = load_overrides(overrides_path)
        except SidecarError as exc:
            result.warnings.append(f"hydra overrides {overrides_path} unusable: {exc.reason}")
    try:
        config = load_config(config_path)
    except (SidecarError, OSError) as exc:
        result.warnings.append(f"hydra config {config_path} unusable: {exc}")
        return
    _flatten_into(layers, result, config, "hydra")
    before = set(result.fields)
    _from_config(config, result, "hydra")
    if set(result.fields) != before or config:
        result.set("hydra_config_path", str(config_path), "hydra")


def _from_wandb(
    path: Path,
    result: Inferred,
    hparams: dict[str, Any],
    layers: dict[str, dict[str, Param]],
    *,
    wandb_online: bool,
    wandb_cache: AnswerCache | None,
) -> None:
    from ckpt_index.sources.config_fields import model_fields_from_config, settings_from_config
    from ckpt_index.sources.wandb import files, locate, online

    hints = tuple(
        v
        for v in (result.fields.get("wandb_run_id"), hparams.get("wandb_run_id"))
        if isinstance(v, str) and v
    )
    try:
        location = locate.find_run(path, run_id_hints=hints)
        if location is None:
            return
        run = files.read_run(location)
        if run is None and wandb_online:
            run = online.fetch_online(
                location.run_path,
                cache=wandb_cache,
                global_step=result.fields.get("global_step"),
            )
    except Exception as exc:  # W&B files of any shape must not stop a sync
        result.warnings.append(f"W&B run unusable: {exc.__class__.__name__}: {exc}")
        return
    if run is None:
        return
    # What could not be read (a file over its size limit, a damaged log) is said on the row.
    result.warnings.extend(f"W&B run: {clean_text(str(w))}" for w in run.warnings)
    result.set("wandb_run_id", run.run_id, "wandb")
    # W&B's own keys (``_wandb``, ``_name``, ...) start with ``_``, at any level.
    _flatten_into(layers, result, run.config, "wandb", skip_private=True)
    fields = {**model_fields_from_config(run.config), **settings_from_config(run.config)}
    for name, value in fields.items():
        result.set(name, value, "wandb")
    step = result.fields.get("global_step")
    if step is not None:
        # Lightning's WandbLogger logs a checkpoint's validation under trainer/global_step - 1;
        # checkpoint_metrics() knows which runs did (never the summary's last-step values).
        result.add_metrics(run.checkpoint_metrics(step), "wandb")


def _from_path(path: Path, result: Inferred) -> None:
    run_dir = run_dir_of(path)
    parsed_dir = parse_run_dir(run_dir.name)
    if parsed_dir is not None:
        result.set("exp_name", run_dir.name, "path")
        result.set("architecture", parsed_dir.architecture, "path")
        result.set("encoder", parsed_dir.encoder, "path")
        if parsed_dir.phase in PHASES:
            result.set("training_phase", parsed_dir.phase, "path")
    # Without the naming scheme (or a source naming the experiment), the run folder names it.
    result.set("exp_name", clean_name(experiment_dir_of(path).name), "path")
    name = parse_checkpoint_name(path.name)
    result.set("epoch", name.epoch, "path")
    result.set("global_step", name.step, "path")
    if name.format == "best" and name.metric and name.metric_value is not None:
        result.add_metrics({name.metric: name.metric_value}, "path")


def _from_state_dict(contents: Any, result: Inferred) -> None:
    from ckpt_index.sources.state_dict import infer_encoder

    try:
        result.set("encoder", infer_encoder(contents.state_dict_shapes or {}), "state_dict")
    except Exception as exc:
        result.warnings.append(f"state dict inference failed: {exc}")


#: Fields that are not text (every other field is), as the index stores them.
_FLOAT_FIELDS = frozenset({"precision", "recall", "hmean", "validation_loss"})
_BOOL_FIELDS = frozenset({"save_last", "encoder_pretrained", "encoder_frozen"})
_CHOICES = {"mode": MODES, "training_phase": PHASES}


def _storable(name: str, value: Any) -> tuple[Any, str | None]:
    """(value to keep or None, what was wrong with it) for field ``name``."""
    if name in INT_RANGES:
        problem = int_problem(value, INT_RANGES[name])
        return (value, None) if problem is None else (None, f"{problem}; ignored")
    if name in _FLOAT_FIELDS:
        number = finite_float(value)
        return (
            (number, None)
            if number is not None
            else (None, f"{show(value)} is not a finite number; ignored")
        )
    if name in _BOOL_FIELDS:
        return (
            (value, None)
            if type(value) is bool
            else (None, f"{show(value)} is not true or false; ignored")
        )
    if name in _CHOICES:
        if isinstance(value, str) and value in _CHOICES[name]:
            return value, None
        return None, f"{show(value)} is not one of {', '.join(_CHOICES[name])}; ignored"
    if not isinstance(value, str):
        return None, f"expected text, got {show(value)}; ignored"
    problem = text_problem(value)
    if problem:
        return clean_text(value), f"{problem}; cleaned"
    return value, None


def created_at_of(path: str | os.PathLike[str]) -> str:
    """The checkpoint's mtime as an ISO 8601 timestamp (local time, like the seeds' sidecars)."""
    return _dt.datetime.fromtimestamp(os.stat(path).st_mtime).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------
# The parsing worker's task (run by name by ckpt_index.isolation.pool)

#: Modules infer_metadata imports lazily that each worker imports before its memory ceiling is
#: set, so that the ceiling is the file's alone.
WORKER_IMPORTS = ("ckpt_index.sources.checkpoint.reader",)


def infer_task(path: str, options: dict[str, Any]) -> dict[str, Any]:
    """:func:`infer_metadata` in a parsing worker, as plain data (:class:`Inferred`'s fields)."""
    import dataclasses

    return dataclasses.asdict(infer_metadata(path, **options))
