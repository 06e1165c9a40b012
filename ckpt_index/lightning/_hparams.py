"""The ``model`` section of a sidecar from a LightningModule's ``hparams``.

Keys are looked up in the hparams, then in ``hparams.model`` and in
``hparams.model.component_overrides`` (the layout of a whole Hydra config saved as hparams):
``architecture_name`` / ``architecture`` / ``arch``; ``encoder`` / ``backbone`` /
``encoder_name`` (a name or a mapping with ``model_name``, ``pretrained``, ``frozen``);
``decoder``, ``head`` and ``loss`` (a name or a mapping with ``name`` and the schema's fields,
other keys going to ``params``). A component's name falls back to the class of its Hydra
``_target_``. A required name that nothing gives is written as ``unknown``, the seeds' convention,
which the index shows as empty.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from ckpt_index.sidecar.schema import DecoderInfo, EncoderInfo, HeadInfo, LossInfo
from ckpt_index.vocabulary import UNKNOWN

_MAX_DEPTH = 8
_NAME_KEYS = ("name", "model_name", "_target_")
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


def _scopes(hparams: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    scopes = [hparams]
    model = hparams.get("model")
    if isinstance(model, Mapping):
        scopes.append(model)
        overrides = model.get("component_overrides")
        if isinstance(overrides, Mapping):
            scopes.append(overrides)
    overrides = hparams.get("component_overrides")
    if isinstance(overrides, Mapping):
        scopes.append(overrides)
    return scopes


def _find(scopes: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> Any:
    for scope in scopes:
        for key in keys:
            value = scope.get(key)
            if value is not None and value != "":
                return value
    return None


def _name_of(value: Any, keys: Sequence[str] = _NAME_KEYS) -> str | None:
    if isinstance(value, str):
        return value or None
    if isinstance(value, Mapping):
        for key in keys:
            name = value.get(key)
            if isinstance(name, str) and name:
                # A Hydra `_target_` names a class: keep its last dotted part.
                return name.rsplit(".", 1)[-1] if key == "_target_" else name
    return None


def _component(value: Any, schema: type[BaseModel], fields: Sequence[str]) -> dict[str, Any]:
    """A decoder/head/loss mapping in the schema's shape; unknown keys go to ``params``."""
    if not isinstance(value, Mapping):
        return {"name": _name_of(value) or UNKNOWN, "params": {}}
    data = plain(value)
    out: dict[str, Any] = {"name": _name_of(data) or UNKNOWN}
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
            if k not in fields and k not in _NAME_KEYS and k != "params" and not k.startswith("_")
        }
    out["params"] = params
    try:
        schema.model_validate(out)
    except ValidationError:
        # A field of the wrong type (say in_channels: "auto"): keep it, but only as a parameter.
        out = {"name": out["name"], "params": {**params, **{k: out[k] for k in fields if k in out}}}
    return out


def _encoder(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        return {"model_name": _name_of(value) or UNKNOWN}
    data = plain(value)
    out: dict[str, Any] = {
        "model_name": _name_of(data, ("model_name", "name", "_target_")) or UNKNOWN
    }
    for key in ("pretrained", "frozen"):
        if isinstance(data.get(key), bool):
            out[key] = data[key]
    if "frozen" not in out and isinstance(data.get("freeze"), bool):
        out["frozen"] = data["freeze"]
    EncoderInfo.model_validate(out)
    return out


def model_section(hparams: Mapping[str, Any] | None) -> dict[str, Any]:
    """``architecture``, ``encoder``, ``decoder``, ``head`` and ``loss`` from ``hparams``."""
    scopes = _scopes(hparams) if isinstance(hparams, Mapping) else []
    architecture = _name_of(_find(scopes, ("architecture_name", "architecture", "arch")))
    return {
        "architecture": architecture or UNKNOWN,
        "encoder": _encoder(_find(scopes, ("encoder", "backbone", "encoder_name"))),
        "decoder": _component(
            _find(scopes, ("decoder",)),
            DecoderInfo,
            ("in_channels", "inner_channels", "output_channels"),
        ),
        "head": _component(_find(scopes, ("head",)), HeadInfo, ("in_channels",)),
        "loss": _component(_find(scopes, ("loss",)), LossInfo, ()),
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
