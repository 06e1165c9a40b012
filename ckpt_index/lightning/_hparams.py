"""The ``model`` section of a sidecar from a LightningModule's ``hparams``.

Which value names each component, and how a name is recognised and cleaned, is the one
config -> model-fields mapping of :mod:`ckpt_index.sources.config_fields` (the hparams, then
``hparams.model`` and ``hparams.model.component_overrides``, the layout of a whole Hydra config
saved as hparams, are searched the same way as a Hydra or W&B config). This module adds what
only a sidecar holds: the encoder's ``pretrained`` / ``frozen`` flags, and the schema's fields of
a decoder, head or loss mapping, other keys going to ``params``. A required name that nothing
gives is written as ``unknown``, the seeds' convention, which the index shows as empty.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from ckpt_index.sidecar.schema import DecoderInfo, EncoderInfo, HeadInfo, LossInfo
from ckpt_index.sources.config_fields import NAME_KEYS, find_component
from ckpt_index.vocabulary import UNKNOWN

_MAX_DEPTH = 8
_SLUG_UNSAFE = re.compile(r"[^A-Za-z0-9_.]+")


def plain(value: Any, depth: int = 0) -> Any:
    """``value`` as YAML-safe plain data: OmegaConf containers, tuples and objects converted."""
    if depth > _MAX_DEPTH:
        return str(value)
    if type(value).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        try:
            value = OmegaConf.to_container(value, resolve=True)
        except Exception:  # an interpolation that only resolves inside a Hydra run
            value = OmegaConf.to_container(value, resolve=False)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v, depth + 1) for v in value]
    return str(value)


def _component(
    found: tuple[str, Any] | None, schema: type[BaseModel], fields: Sequence[str]
) -> dict[str, Any]:
    """A decoder/head/loss mapping in the schema's shape; unknown keys go to ``params``."""
    name, value = found if found is not None else (UNKNOWN, None)
    if not isinstance(value, Mapping):
        return {"name": name, "params": {}}
    data = plain(value)
    out: dict[str, Any] = {"name": name}
    for key in fields:
        if key in data and data[key] is not None:
            out[key] = data[key]
    given = data.get("params")
    if isinstance(given, Mapping):
        params = dict(given)
    else:
        params = {
            k: v
            for k, v in data.items()
            if k not in fields and k not in NAME_KEYS and k != "params" and not k.startswith("_")
        }
    out["params"] = params
    try:
        schema.model_validate(out)
    except ValidationError:
        # A field of the wrong type (say in_channels: "auto"): keep it, but only as a parameter.
        out = {"name": out["name"], "params": {**params, **{k: out[k] for k in fields if k in out}}}
    return out


def _encoder(found: tuple[str, Any] | None) -> dict[str, Any]:
    name, value = found if found is not None else (UNKNOWN, None)
    if not isinstance(value, Mapping):
        return {"model_name": name}
    data = plain(value)
    out: dict[str, Any] = {"model_name": name}
    for key in ("pretrained", "frozen"):
        if isinstance(data.get(key), bool):
            out[key] = data[key]
    if "frozen" not in out and isinstance(data.get("freeze"), bool):
        out["frozen"] = data["freeze"]
    EncoderInfo.model_validate(out)
    return out


def model_section(hparams: Mapping[str, Any] | None) -> dict[str, Any]:
    """``architecture``, ``encoder``, ``decoder``, ``head`` and ``loss`` from ``hparams``."""
    architecture = find_component(hparams, "architecture")
    return {
        "architecture": architecture[0] if architecture is not None else UNKNOWN,
        "encoder": _encoder(find_component(hparams, "encoder")),
        "decoder": _component(
            find_component(hparams, "decoder"),
            DecoderInfo,
            ("in_channels", "inner_channels", "output_channels"),
        ),
        "head": _component(find_component(hparams, "head"), HeadInfo, ("in_channels",)),
        "loss": _component(find_component(hparams, "loss"), LossInfo, ()),
    }


def slug(text: str) -> str:
    """``text`` made safe for one dash-separated part of a run directory name."""
    return _SLUG_UNSAFE.sub("_", text.strip()).strip("_.")


def model_slug(hparams: Mapping[str, Any] | None) -> str | None:
    """``<architecture>-<encoder>`` (or ``<architecture>``) for run directory names, if known."""
    section = model_section(hparams)
    architecture = slug(section["architecture"])
    if not architecture or architecture == UNKNOWN:
        return None
    encoder = slug(section["encoder"]["model_name"])
    return f"{architecture}-{encoder}" if encoder and encoder != UNKNOWN else architecture
