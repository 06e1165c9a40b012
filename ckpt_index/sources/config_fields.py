"""The one mapping from a run config to the index's model and run fields.

A Hydra config, a W&B run config and a LightningModule's ``hparams`` all describe the model the
same way, in one of a few layouts. Every caller reads them through this module:

- **Where a field is looked up.** Model fields (``architecture``, ``encoder``, ``decoder``,
  ``head``, ``loss``) are looked up under each of their key names (:data:`MODEL_KEYS`, such as
  ``architecture`` / ``architecture_name`` / ``arch``) in scopes from the most specific to the
  most general: ``model.component_overrides``, ``component_overrides``, ``model``, then the top
  level. An override wins over the model's default, a model's own key over a flat one.
  ``exp_name`` and ``wandb_run_id`` are looked up at the dotted paths of :data:`RUN_PATHS`.
  A dotted path also matches flattened keys (``"model.architecture"`` or ``"model/architecture"``
  as one key, as W&B stores nested configs).
- **How a name is recognised.** A model field's value is a name itself, or a mapping that names
  it: ``model_name`` then ``name`` for the encoder (timm's key), ``name`` then ``model_name`` for
  the others, then the last dotted part of a Hydra ``_target_`` class. ``exp_name`` and
  ``wandb_run_id`` must be text. The first value that gives a name wins; one that does not (a
  number, a list, an empty text, a mapping without those keys) is passed over.
- **How a value is cleaned.** Surrounding spaces are removed; a name is one printable line of at
  most :data:`MAX_NAME_CHARS` characters; text holding an unresolved interpolation (``${...}``) or
  written as ``<module.name>`` (how the checkpoint reader renders an object it did not build) is
  not a name.

Nothing here raises for any config content.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: The longest string taken for a name (architecture, encoder, run id, ...).
MAX_NAME_CHARS = 512

#: Model field -> the keys that hold it, in order of preference.
MODEL_KEYS: dict[str, tuple[str, ...]] = {
    "architecture": ("architecture", "architecture_name", "arch"),
    "encoder": ("encoder", "backbone", "encoder_name"),
    "decoder": ("decoder",),
    "head": ("head",),
    "loss": ("loss",),
}
#: Where a model field is looked up, most specific first ("" is the top level).
SCOPES = ("model.component_overrides", "component_overrides", "model", "")
#: Run field -> the dotted paths that hold it, in order of preference.
RUN_PATHS: dict[str, tuple[str, ...]] = {
    "exp_name": ("exp_name", "experiment.name"),
    "wandb_run_id": ("wandb_run_id", "logger.wandb.id", "wandb.id", "wandb.run_id"),
}
#: The keys of a mapping that name the component it configures, in order of preference.
NAME_KEYS = ("name", "model_name", "_target_")
ENCODER_NAME_KEYS = ("model_name", "name", "_target_")


def is_name(value: Any) -> bool:
    """Whether ``value`` can be a name: a short one-line string without control characters."""
    if not isinstance(value, str) or not value or len(value) > MAX_NAME_CHARS:
        return False
    return value.isprintable()  # NUL, newlines, escapes, lone surrogates are not


def clean_name(value: Any) -> str | None:
    """``value`` as a name (spaces around it removed), or None when it is not one."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not is_name(text) or "${" in text or (text.startswith("<") and text.endswith(">")):
        return None
    return text


def get_path(config: Any, dotted: str) -> Any:
    """The value at ``dotted`` in ``config``, None where any part is missing.

    Flattened keys count: ``get_path(c, "model.architecture")`` also finds
    ``c["model.architecture"]`` and ``c["model/architecture"]``.
    """
    return _lookup(config, dotted.split(".")) if dotted else config


def _lookup(config: Any, parts: list[str]) -> Any:
    if not parts:
        return config
    if not isinstance(config, Mapping):
        return None
    for i in range(len(parts), 0, -1):
        for sep in (".", "/"):
            key = sep.join(parts[:i])
            if key in config:
                found = _lookup(config[key], parts[i:])
                if found is not None:
                    return found
    return None


def name_of(value: Any, keys: tuple[str, ...] = NAME_KEYS) -> str | None:
    """The name ``value`` gives: itself as text, or a mapping's first name under ``keys``.

    A ``_target_`` names a class by its dotted path: its last part is the name.
    """
    if not isinstance(value, Mapping):
        return clean_name(value)
    for key in keys:
        name = clean_name(value.get(key))
        if name is not None:
            return name.rsplit(".", 1)[-1] if key == "_target_" else name
    return None


def find_component(config: Any, field: str) -> tuple[str, Any] | None:
    """``(name, value)`` of model field ``field`` in ``config``: the value (a text or the
    mapping that configures the component) where its name was found; None without one."""
    keys = ENCODER_NAME_KEYS if field == "encoder" else NAME_KEYS
    for scope in SCOPES:
        for key in MODEL_KEYS[field]:
            path = f"{scope}.{key}" if scope else key
            value = get_path(config, path)
            if value is None:  # only flattened name keys: {"model.encoder.model_name": "r18"}
                named = {k: get_path(config, f"{path}.{k}") for k in keys}
                value = {k: v for k, v in named.items() if v is not None} or None
            name = name_of(value, keys)
            if name is not None:
                return name, value
    return None


def fields_from_config(config: Any) -> dict[str, str]:
    """Every field ``config`` gives: the model fields, ``exp_name`` and ``wandb_run_id``.

    Example::

        fields_from_config({"model": {"architecture": "dbnet"}, "exp_name": "x"})
        # {"architecture": "dbnet", "exp_name": "x"}
    """
    fields: dict[str, str] = {}
    if not isinstance(config, Mapping):
        return fields
    for field in MODEL_KEYS:
        found = find_component(config, field)
        if found is not None:
            fields[field] = found[0]
    for field, paths in RUN_PATHS.items():
        for dotted in paths:
            name = clean_name(get_path(config, dotted))
            if name is not None:
                fields[field] = name
                break
    return fields


def model_fields_from_config(config: Any) -> dict[str, str]:
    """The model fields and ``exp_name`` ``config`` gives (only those found).

    The config's ``wandb_run_id`` is left out: for a W&B run config, the run's own id says it.
    """
    fields = fields_from_config(config)
    fields.pop("wandb_run_id", None)
    return fields


# ---------------------------------------------------------------------------------------------
# Settings: the encoder's flags and ModelCheckpoint's configuration

#: Where a config keeps its ModelCheckpoint settings, most specific first (Hydra's
#: ``callbacks.<name>`` layout, then flatter ones).
CHECKPOINT_PATHS = (
    "callbacks.model_checkpoint",
    "callbacks.checkpoint",
    "callbacks.modelcheckpoint",
    "model_checkpoint",
    "checkpoint",
    "checkpointing",
)
#: Flag -> the keys that hold it beside the encoder's name (in ``model`` or at the top level),
#: when the encoder is not a mapping that holds it.
FLAG_KEYS: dict[str, tuple[str, ...]] = {
    "pretrained": ("encoder_pretrained", "pretrained"),
    "frozen": ("encoder_frozen", "freeze_encoder", "frozen"),
}
#: Flag -> its field in the index (and in :func:`settings_from_config`'s answer).
FLAG_FIELDS = {"pretrained": "encoder_pretrained", "frozen": "encoder_frozen"}


def settings_from_config(config: Any) -> dict[str, Any]:
    """The encoder's flags (``encoder_pretrained``, ``encoder_frozen``) and ModelCheckpoint's
    ``monitor``, ``mode``, ``save_top_k`` and ``save_last`` that ``config`` states (only those
    found, each of its type: never a default).

    The flags come from the encoder's mapping (``pretrained``, ``frozen`` or ``freeze``), else
    from :data:`FLAG_KEYS` in ``model`` or at the top level; ModelCheckpoint's settings from the
    first mapping at :data:`CHECKPOINT_PATHS`, or a callback whose ``_target_`` is a
    ModelCheckpoint. ``save_last: link`` (Lightning's linked ``last.ckpt``) is ``True``.

    Example::

        settings_from_config({"callbacks": {"model_checkpoint": {"save_top_k": 2}}})
        # {"save_top_k": 2}
    """
    if not isinstance(config, Mapping):
        return {}
    settings = _encoder_flags(config)
    callback = _checkpoint_callback(config)
    if callback is not None:
        monitor = clean_name(callback.get("monitor"))
        mode = callback.get("mode")
        top_k = callback.get("save_top_k")
        save_last = callback.get("save_last")
        if monitor is not None:
            settings["monitor"] = monitor
        if mode in ("min", "max"):
            settings["mode"] = mode
        if isinstance(top_k, int) and not isinstance(top_k, bool):
            settings["save_top_k"] = top_k
        if isinstance(save_last, bool) or save_last == "link":
            settings["save_last"] = bool(save_last)
    return settings


def _encoder_flags(config: Mapping[str, Any]) -> dict[str, Any]:
    found = find_component(config, "encoder")
    encoder = found[1] if found is not None and isinstance(found[1], Mapping) else {}
    flags: dict[str, Any] = {}
    for flag, keys in FLAG_KEYS.items():
        own = [flag, "freeze"] if flag == "frozen" else [flag]
        values = [encoder.get(k) for k in own]
        values += [get_path(config, f"{scope}{key}") for scope in ("model.", "") for key in keys]
        value = next((v for v in values if isinstance(v, bool)), None)
        if value is not None:
            flags[FLAG_FIELDS[flag]] = value
    return flags


_SETTING_KEYS = ("monitor", "mode", "save_top_k", "save_last")


def _checkpoint_callback(config: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for dotted in CHECKPOINT_PATHS:
        value = get_path(config, dotted)
        if isinstance(value, Mapping):
            return value
        # Only flattened keys: {"checkpoint/save_top_k": 2}, as W&B may store them.
        flat = {k: get_path(config, f"{dotted}.{k}") for k in _SETTING_KEYS}
        if any(v is not None for v in flat.values()):
            return flat
    callbacks = get_path(config, "callbacks")
    if isinstance(callbacks, Mapping):
        callbacks = list(callbacks.values())
    for value in callbacks if isinstance(callbacks, list) else ():
        if isinstance(value, Mapping) and str(value.get("_target_", "")).endswith(
            "ModelCheckpoint"
        ):
            return value
    return None
