"""The ``metrics`` section of a sidecar from Lightning's ``trainer.callback_metrics``.

Canonical fields are matched by the shared rules of :mod:`ckpt_index.vocabulary` (the fallbacks
use the same). Every scalar metric is kept under ``additional_metrics`` by its logged name.
Nothing here imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ckpt_index.vocabulary import canonical_metrics


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
        return (
            _shortest_float32(number)
            if str(getattr(value, "dtype", "")) == "torch.float32"
            else number
        )
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


def metrics_section(callback_metrics: Mapping[str, Any]) -> dict[str, Any]:
    """``precision``, ``recall``, ``hmean``, ``validation_loss`` and ``additional_metrics``."""
    values: dict[str, float] = {}
    for name, value in callback_metrics.items():
        number = scalar(value)
        if number is not None:
            values[str(name)] = number
    section: dict[str, Any] = canonical_metrics(values)
    section["additional_metrics"] = dict(sorted(values.items()))
    return section
