"""The sidecar metadata schema, ``schema_version: "1.0"``: what ``X.metadata.yaml`` may hold.

A field the file does not give reads as None (or an empty mapping), never as an assumed value:
``pretrained``, ``frozen``, ``mode``, ``save_top_k`` and ``save_last`` are facts only when a
sidecar states them. Unknown extra keys are kept (``extra="allow"``) so that a sidecar written
by a newer minor release round-trips; only a different *major* version is refused. Values must
be storable in the index (``ckpt_index.storable``): integers within their column's range, and no
text anywhere in the document, keys included, with a NUL or a lone surrogate.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ckpt_index.storable import (
    MAX_EPOCH,
    MAX_GLOBAL_STEP,
    MAX_METRIC_NAME,
    MAX_SAVE_TOP_K,
    show,
    text_problem,
)
from ckpt_index.vocabulary import Phase

SCHEMA_VERSION = "1.1"
SUPPORTED_MAJOR = "1"

UnitFloat = Annotated[float, Field(ge=0.0, le=1.0)]
Channels = int | list[int] | None


class _Section(BaseModel):
    model_config = ConfigDict(extra="allow")


class TrainingInfo(_Section):
    epoch: Annotated[int, Field(ge=0, le=MAX_EPOCH)]
    global_step: Annotated[int, Field(ge=0, le=MAX_GLOBAL_STEP)]
    training_phase: Phase = "training"
    max_epochs: Annotated[int, Field(ge=-1, le=MAX_EPOCH)] | None = None


class EncoderInfo(_Section):
    model_name: str
    #: None: no source said (never a default written as a fact; a sidecar that says is kept).
    pretrained: bool | None = None
    frozen: bool | None = None


class DecoderInfo(_Section):
    name: str
    in_channels: Channels = None
    inner_channels: int | None = None
    output_channels: int | None = None
    params: dict[str, Any] = Field(default_factory=dict)


class HeadInfo(_Section):
    name: str
    in_channels: Channels = None
    params: dict[str, Any] = Field(default_factory=dict)


class LossInfo(_Section):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class ModelInfo(_Section):
    architecture: str
    encoder: EncoderInfo
    decoder: DecoderInfo | None = None
    head: HeadInfo | None = None
    loss: LossInfo | None = None


class MetricsInfo(_Section):
    precision: UnitFloat | None = None
    recall: UnitFloat | None = None
    hmean: UnitFloat | None = None
    validation_loss: float | None = None
    additional_metrics: dict[str, float] = Field(default_factory=dict)


class CheckpointingConfig(_Section):
    """ModelCheckpoint's settings; each None when the sidecar does not say (Lightning's own
    defaults differ between versions and from the seeds', so none is assumed)."""

    monitor: str | None = None
    mode: Literal["min", "max"] | None = None
    save_top_k: Annotated[int, Field(ge=-1, le=MAX_SAVE_TOP_K)] | None = None
    save_last: bool | None = None


class CheckpointMetadataV1(_Section):
    """One checkpoint's metadata, as stored in ``X.metadata.yaml`` beside ``X.ckpt``."""

    schema_version: str = SCHEMA_VERSION
    checkpoint_path: str | None = None
    exp_name: str
    created_at: str
    training: TrainingInfo
    model: ModelInfo
    metrics: MetricsInfo = Field(default_factory=MetricsInfo)
    checkpointing: CheckpointingConfig | None = None
    hydra_config_path: str | None = None
    wandb_run_id: str | None = None
    #: Schema 1.1: the run's hyperparameters, nested as in its config (the index flattens them to
    #: dotted names). A 1.0 reader keeps it as an extra key; 1.0 files without it stay valid.
    #: Keys of any type (YAML's ``1:`` or ``true:``): the index names them by their text.
    hyperparameters: dict[Any, Any] | None = None
    #: Schema 1.1: the run's Hydra overrides (``overrides.yaml``, e.g. ``model.lr=0.01``): the
    #: names a sweep varied.
    hydra_overrides: list[str] | None = None
    #: Schema 1.1: ``pinned: true`` (``ckpt-index pin``): ``ckpt-index gc`` never deletes the
    #: checkpoint. A 1.0 reader keeps it as an extra key; absent, null or false: not pinned.
    pinned: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _storable_text(cls, data: Any, info: ValidationInfo) -> Any:
        # One walk over the whole document (extra keys and params included): pydantic accepts a
        # lone surrogate in a str field, and the row would then fail to serialise or to insert.
        # Text decoded from UTF-8 without a NUL can only hold one through a YAML escape: a
        # sidecar without a backslash is known clean (context "plain_text") and skips the walk.
        if info.context and info.context.get("plain_text"):
            return data
        problem = find_bad_text(data)
        if problem is not None:
            raise TextError(problem)
        return data

    @field_validator("schema_version", mode="before")
    @classmethod
    def _version_as_text(cls, value: Any) -> Any:
        # An unquoted `schema_version: 1.0` arrives from YAML as a float.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        return value

    @field_validator("schema_version", mode="after")
    @classmethod
    def _supported_major(cls, value: str) -> str:
        major = value.split(".", 1)[0].strip()
        if major != SUPPORTED_MAJOR:
            raise ValueError(
                f"unsupported schema version {value!r}: this release reads {SUPPORTED_MAJOR}.x"
            )
        return value

    @field_validator("created_at", mode="before")
    @classmethod
    def _timestamp_as_text(cls, value: Any) -> Any:
        # YAML turns an unquoted ISO timestamp into a datetime; keep the text form.
        if isinstance(value, (_dt.datetime, _dt.date)):
            return value.isoformat()
        return value

    @field_validator("created_at", mode="after")
    @classmethod
    def _iso_8601(cls, value: str) -> str:
        try:
            _dt.datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"not an ISO 8601 timestamp: {value!r}") from None
        return value


class TextError(ValueError):
    """A string of the document that the index cannot store; the message names where it is."""


def find_bad_text(document: Any, limit: int = 100_000) -> str | None:
    """``"<path>: <problem>"`` for a key or string holding a NUL or a lone surrogate, or None.

    Iterative (a sidecar's nesting is bounded by the loader, but this must not recurse anyway);
    ``limit`` bounds the containers visited. Paths are only built once a problem is known: the
    plain walk is what every sidecar of a sync pays.
    """
    stack = [document]
    visited = 0
    while stack and visited < limit:
        value = stack.pop()
        visited += 1
        if isinstance(value, dict):
            if any(type(key) is str and _is_bad(key) for key in value):
                return _locate(document, limit)
            items: Iterable[Any] = value.values()
        elif isinstance(value, (list, tuple)):
            items = value
        else:  # a str subclass, pushed below
            if isinstance(value, str) and text_problem(value):
                return _locate(document, limit)
            continue
        for item in items:
            if type(item) is str:
                if _is_bad(item):
                    return _locate(document, limit)
            elif isinstance(item, (dict, list, tuple, str)):
                stack.append(item)
    return None


def _is_bad(value: str) -> bool:
    """Whether ``value`` holds a NUL or a lone surrogate; cheap for the common ASCII string."""
    return ("\x00" in value or not value.isascii()) and text_problem(value) is not None


def _locate(document: Any, limit: int) -> str | None:
    """The path and problem of a bad string in ``document`` (the slow walk, once)."""
    stack: list[tuple[str, Any]] = [("", document)]
    visited = 0
    while stack and visited < limit:
        where, value = stack.pop()
        if isinstance(value, str):
            problem = text_problem(value)
            if problem:
                return f"{_shorten(where) or '(document)'}: {problem}"
        elif isinstance(value, dict):
            visited += 1
            for key, item in value.items():
                if isinstance(key, str):
                    problem = text_problem(key)
                    if problem:
                        return f"{_shorten(where) or '(document)'}: key {show(key)} {problem}"
                    name = key
                else:
                    name = show(key)
                stack.append((f"{where}.{name}" if where else name, item))
        elif isinstance(value, (list, tuple)):
            visited += 1
            stack.extend((f"{where}.{i}", item) for i, item in enumerate(value))
    return None


def _shorten(where: str, limit: int = 120) -> str:
    return where if len(where) <= limit else "..." + where[-(limit - 3) :]


def format_validation_error(error: ValidationError) -> str:
    """One readable line per error: ``field.path: message (got value)``, joined with ``; ``."""
    parts = []
    for item in error.errors(include_url=False):
        where = ".".join(str(p) for p in item["loc"]) or "(document)"
        message = item["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        if isinstance(item.get("ctx", {}).get("error"), TextError):
            parts.append(message)  # it names its own field
            continue
        if item["type"] != "missing" and "input" in item and not isinstance(item["input"], dict):
            shown = _short_repr(item["input"])
            message = f"{message} (got {shown})"
        parts.append(f"{where}: {message}")
    # Keys and values come from the file and may hold newlines; a reason is always one line.
    return " ".join("; ".join(parts).split())


def _short_repr(value: Any) -> str:
    try:
        shown = repr(value)
    except ValueError:  # an int past sys.get_int_max_str_digits(), e.g. from YAML hex
        return f"<{type(value).__name__} too large to show>"
    return shown if len(shown) <= 60 else shown[:57] + "..."


def metadata_warnings(meta: CheckpointMetadataV1) -> list[str]:
    """Problems that do not make a sidecar invalid."""
    warnings = []
    if meta.metrics.hmean is None:
        warnings.append("metrics.hmean is missing")
    for name, value in meta.metrics.additional_metrics.items():
        if len(name) > MAX_METRIC_NAME:
            warnings.append(
                f"metrics.additional_metrics: a name longer than {MAX_METRIC_NAME} "
                f"characters ({show(name, 40)}); not indexed"
            )
        elif not math.isfinite(value):
            warnings.append(f"metrics.additional_metrics.{name} is {value}; not indexed")
    return warnings
