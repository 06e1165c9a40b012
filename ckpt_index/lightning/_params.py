"""The ``hyperparameters`` and ``hydra_overrides`` of a sidecar, from a training run.

The callback computes them once per fit (not per checkpoint): the Hydra config of the run
(``.hydra/config.yaml``, interpolations kept as text, as ``OmegaConf.to_container(cfg,
resolve=False)`` gives them), overlaid by the DataModule's ``hparams``, overlaid by the
LightningModule's ``hparams`` (the module wins on a clash, as Lightning merges them for its
loggers). The overlay is per leaf: a mapping in a higher layer merges into the same mapping below.

Values become YAML-safe plain data (OmegaConf containers unresolved, tuples as lists, enums by
value, paths, tensors and other objects as text), and what the index would not keep
(:func:`ckpt_index.hyperparams.flatten`'s bounds: count, name length, value size, depth) is left
out here already, so a sidecar stays small and a later ``ckpt-index sync`` of it indexes exactly
the parameters the callback's own row got.
"""

from __future__ import annotations

import enum
import json
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ckpt_index.hyperparams import MAX_DEPTH, MAX_PARAMS, MAX_VALUE_BYTES, flatten
from ckpt_index.storable import clean_text, show, text_problem

#: A list longer than this cannot fit in MAX_VALUE_BYTES of JSON (each item takes >= 2 bytes).
_MAX_LIST = MAX_VALUE_BYTES // 2 + 1
#: Leaves converted at most per layer: flatten keeps MAX_PARAMS, the rest only cost time.
_MAX_LEAVES = 4 * MAX_PARAMS
#: Containers nested deeper than this (past flatten's own MAX_DEPTH) are kept as their text.
_MAX_PLAIN_DEPTH = MAX_DEPTH + 8
#: A value flatten drops for its size (and says so): what stands for a list too long to keep.
_TOO_BIG = "x" * (MAX_VALUE_BYTES + 1)
#: overrides.yaml is a short list; refuse anything past this.
_MAX_OVERRIDES_BYTES = 1 << 20
_MAX_OVERRIDE_CHARS = 4096


class _Budget:
    def __init__(self) -> None:
        self.leaves = 0


def plain_value(value: Any, depth: int = 0, budget: _Budget | None = None) -> Any:
    """``value`` as YAML-safe plain data (see the module docstring); never raises."""
    budget = budget if budget is not None else _Budget()
    if type(value).__module__.startswith("omegaconf"):
        try:
            from omegaconf import OmegaConf

            value = OmegaConf.to_container(value, resolve=False)
        except Exception:  # noqa: BLE001 - a broken node is kept as its text
            return _text(value)
    if value is None or isinstance(value, (bool, str)):
        budget.leaves += 1
        return value
    if isinstance(value, int):
        budget.leaves += 1
        return int(value)  # an IntEnum or int subclass as a plain int
    if isinstance(value, float):
        budget.leaves += 1
        return float(value)  # NaN and infinities too: a sidecar keeps them (.nan, .inf)
    if isinstance(value, enum.Enum):
        inner = value.value
        return plain_value(inner if isinstance(inner, (bool, int, float, str)) else value.name)
    if isinstance(value, os.PathLike):
        budget.leaves += 1
        return _text(os.fspath(value))
    if depth >= _MAX_PLAIN_DEPTH:
        return _text(value)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if budget.leaves >= _MAX_LEAVES:
                break
            out[key_text(key)] = plain_value(item, depth + 1, budget)
        return out
    if isinstance(value, (list, tuple, set, frozenset)):
        budget.leaves += 1
        if len(value) > _MAX_LIST:
            return _TOO_BIG
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [plain_value(item, depth + 1, _Budget()) for item in items]
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "shape", None) == ():  # a 0-d tensor or numpy scalar
        try:
            return plain_value(item(), depth, budget)
        except Exception:  # noqa: BLE001 - fall back to the text
            pass
    budget.leaves += 1
    return _text(value)


def key_text(key: Any) -> str:
    """A mapping key as the text flatten names it by."""
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, (bool, int)):
        return json.dumps(key)
    if isinstance(key, float):
        return json.dumps(key) if math.isfinite(key) else str(key)
    return show(key, 40)


def _text(value: Any) -> str:
    try:
        text = value if isinstance(value, str) else str(value)
    except Exception:  # noqa: BLE001 - an object whose __str__ fails
        return show(type(value).__name__)
    if len(text) > MAX_VALUE_BYTES:
        return _TOO_BIG
    return clean_text(text) if text_problem(text) else text


def overlay(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``top``'s leaves put over it (mappings merge, anything else replaces)."""
    out = dict(base)
    for key, value in top.items():
        below = out.get(key)
        if isinstance(value, Mapping) and isinstance(below, dict) and value and below:
            out[key] = overlay(below, value)
        else:
            out[key] = value
    return out


def bounded(config: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``config`` without what :func:`flatten` would drop, and flatten's warnings about it."""
    kept, warnings = flatten(config, "callback")
    if not warnings:
        return config, []
    names = set(kept)
    pruned = _prune(config, "", 0, names)
    return (pruned if isinstance(pruned, dict) else {}), warnings


_DROPPED = object()


def _prune(value: Any, prefix: str, depth: int, names: set[str]) -> Any:
    if isinstance(value, Mapping) and value and depth < MAX_DEPTH:
        out = {}
        for key, item in value.items():
            name = f"{prefix}.{key}" if prefix else key
            kept = _prune(item, name, depth + 1, names)
            if kept is not _DROPPED:
                out[key] = kept
        return out if out else _DROPPED
    clean = clean_text(prefix) if text_problem(prefix) else prefix
    return value if clean in names else _DROPPED


def run_hyperparameters(
    module_hparams: Any, datamodule_hparams: Any, hydra_config: Mapping[str, Any] | None
) -> tuple[dict[str, Any] | None, list[str]]:
    """The sidecar's ``hyperparameters`` (None when there are none) and warnings."""
    merged: dict[str, Any] = {}
    for layer in (hydra_config, datamodule_hparams, module_hparams):
        if layer is None:
            continue
        plain = plain_value(layer)
        if isinstance(plain, dict):
            merged = overlay(merged, plain)
    if not merged:
        return None, []
    config, warnings = bounded(merged)
    return (config or None), warnings


def load_hydra_config(path: str | None) -> tuple[dict[str, Any] | None, str | None]:
    """The run's Hydra config as plain data (unresolved), or None and why it could not be read."""
    if path is None:
        return None, None
    from ckpt_index.sidecar.files import SidecarError
    from ckpt_index.sources.hydra import load_config

    try:
        return load_config(path), None
    except SidecarError as exc:
        return None, str(exc)


def hydra_overrides(config_path: str | None) -> list[str] | None:
    """The run's Hydra overrides: ``.hydra/overrides.yaml`` beside its config, else the running
    job's ``HydraConfig.get().overrides.task``; None when the run has none."""
    found: Any = None
    if config_path is not None and Path(config_path).name == "config.yaml":
        found = _read_overrides(Path(config_path).with_name("overrides.yaml"))
    if found is None and "hydra" in sys.modules:
        try:
            from hydra.core.hydra_config import HydraConfig

            if HydraConfig.initialized():
                found = list(HydraConfig.get().overrides.task)
        except Exception:  # noqa: BLE001 - a half-initialised Hydra must not cost a sidecar
            found = None
    if not isinstance(found, list):
        return None
    out = [
        clean_text(item) if text_problem(item) else item
        for item in found[:MAX_PARAMS]
        if isinstance(item, str) and len(item) <= _MAX_OVERRIDE_CHARS
    ]
    return out or None


def _read_overrides(path: Path) -> Any:
    import yaml

    from ckpt_index.safe_io import UnsafeFileError, read_bounded

    try:
        data = read_bounded(path, _MAX_OVERRIDES_BYTES, what="Hydra overrides")
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        return yaml.load(data, Loader=loader)  # noqa: S506 - a safe loader
    except (OSError, UnsafeFileError, yaml.YAMLError, ValueError, RecursionError):
        return None
