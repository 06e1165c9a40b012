"""The sidecar metadata schema, ``schema_version: "1.0"`` (SPEC section 3).

Unknown extra keys are kept (``extra="allow"``) so that a sidecar written by a newer minor release
round-trips; only a different *major* version is refused.
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

SCHEMA_VERSION = "1.0"
SUPPORTED_MAJOR = "1"

UnitFloat = Annotated[float, Field(ge=0.0, le=1.0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Channels = int | list[int] | None


class _Section(BaseModel):
    model_config = ConfigDict(extra="allow")


class TrainingInfo(_Section):
    epoch: NonNegativeInt
    global_step: NonNegativeInt
    training_phase: Literal["training", "validation", "finetuning"] = "training"
    max_epochs: Annotated[int, Field(ge=-1)] | None = None


class EncoderInfo(_Section):
    model_name: str
    pretrained: bool = True
    frozen: bool = False


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
    monitor: str | None = None
    mode: Literal["min", "max"] = "max"
    save_top_k: Annotated[int, Field(ge=-1)] = 1
    save_last: bool = False


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


def format_validation_error(error: ValidationError) -> str:
    """One readable line per error: ``field.path: message (got value)``, joined with ``; ``."""
    parts = []
    for item in error.errors(include_url=False):
        where = ".".join(str(p) for p in item["loc"]) or "(document)"
        message = item["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
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
        if not math.isfinite(value):
            warnings.append(f"metrics.additional_metrics.{name} is {value}; not indexed")
    return warnings
