"""The ``metrics`` section of a sidecar from Lightning's ``trainer.callback_metrics``.

Canonical fields are matched by pattern: ``precision``, ``recall`` and ``hmean`` (also ``f1``,
``f1_score``, ``fscore``) as the last part of a name such as ``val/hmean``, ``cleval/precision``
or ``val_f1``; ``validation_loss`` from a ``loss`` in a validation namespace (``val/loss``,
``val_loss``, ``validation_loss``). Validation names win over bare names, bare names over other
namespaces, and training metrics never fill a canonical field. Every scalar metric is kept under
``additional_metrics`` by its logged name. Nothing here imports torch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

_SEPARATORS = re.compile(r"[/_.\-]+")
_VALIDATION = frozenset({"val", "valid", "validation", "eval", "evaluation", "cleval"})
_TRAINING = frozenset({"train", "training"})
_LEAVES = {
    "precision": ("precision",),
    "recall": ("recall",),
    "hmean": ("hmean", "f1", "f1_score", "f1score", "fscore", "f_score"),
}
#: Lightning suffixes metrics logged both per step and per epoch; the epoch value is the one we want.
_EPOCH_SUFFIX = "_epoch"


def scalar(value: Any) -> float | None:
    """A logged value as a float; ``None`` for tensors with more than one element and non-numbers.

    A float32 tensor's value is written as the shortest decimal that reads back as the same
    float32: 0.9 logged as a tensor stays 0.9 in the sidecar, not 0.8999999761581421.
    """
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    numel = getattr(value, "numel", None)
    if callable(numel):  # a torch tensor, without importing torch
        if numel() != 1:
            return None
        number = float(value.item())
        return _shortest_float32(number) if str(getattr(value, "dtype", "")) == "torch.float32" else number
    try:
        return float(value)  # numpy scalars
    except (TypeError, ValueError):
        return None


def _shortest_float32(number: float) -> float:
    try:
        import numpy
    except ImportError:  # torch runs without numpy; keep the exact widened value then
        return number
    return float(str(numpy.float32(number))) if math.isfinite(number) else number


def _split(name: str) -> tuple[list[str], bool]:
    """Lower-case tokens of a metric name, and whether it carried Lightning's ``_epoch`` suffix."""
    lowered = name.lower()
    suffixed = lowered.endswith(_EPOCH_SUFFIX) and len(lowered) > len(_EPOCH_SUFFIX)
    if suffixed:
        lowered = lowered[: -len(_EPOCH_SUFFIX)]
    return [t for t in _SEPARATORS.split(lowered) if t], suffixed


def _leaf_length(tokens: list[str], leaves: tuple[str, ...]) -> int:
    """How many trailing tokens spell one of ``leaves`` (``f1_score`` is two tokens); 0 if none."""
    for leaf in leaves:
        parts = [t for t in _SEPARATORS.split(leaf) if t]
        if len(tokens) >= len(parts) and tokens[-len(parts):] == parts:
            return len(parts)
    return 0


def _rank(name: str, field: str) -> tuple[int, int, str] | None:
    """Sort key of ``name`` as a candidate for ``field`` (lower is better); ``None`` if no match."""
    tokens, suffixed = _split(name)
    if field == "validation_loss":
        if not tokens or tokens[-1] != "loss":
            return None
        stage = set(tokens[:-1])
        return (0, int(suffixed), name) if stage & _VALIDATION else None
    width = _leaf_length(tokens, _LEAVES[field])
    if not width:
        return None
    stage = set(tokens[:-width])
    if stage & _TRAINING:
        return None
    if stage & _VALIDATION:
        return (0, int(suffixed), name)
    return (1 if not stage else 2, int(suffixed), name)


def metrics_section(callback_metrics: Mapping[str, Any]) -> dict[str, Any]:
    """``precision``, ``recall``, ``hmean``, ``validation_loss`` and ``additional_metrics``."""
    values: dict[str, float] = {}
    for name, value in callback_metrics.items():
        number = scalar(value)
        if number is not None:
            values[str(name)] = number
    section: dict[str, Any] = {}
    for field in ("precision", "recall", "hmean", "validation_loss"):
        candidates = sorted(
            (key, name) for name in values if (key := _rank(name, field)) is not None
        )
        for _, name in candidates:
            value = values[name]
            if not math.isfinite(value):
                continue
            if field != "validation_loss" and not 0.0 <= value <= 1.0:
                continue  # a percentage or a count, not a ratio; it stays in additional_metrics
            section[field] = value
            break
    section["additional_metrics"] = dict(sorted(values.items()))
    return section
