"""Which logged metric is precision, recall, hmean or the validation loss.

Lightning runs log names like ``val/hmean``, ``cleval/recall``, ``val_f1`` or ``val/loss``; the
sidecar has one canonical slot for each. The same rules serve the training callback and the
fallbacks, so a checkpoint gets the same canonical values whichever way it was indexed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

# Tried in order; the first logged name that matches fills the slot. Validation-scoped names win
# over training ones, and a bare "hmean" over a prefixed one.
_PATTERNS: dict[str, tuple[re.Pattern[str], ...]] = {
    "precision": (
        re.compile(r"^precision$"),
        re.compile(r"^(val|valid|validation|cleval)[/_.-]precision$"),
        re.compile(r"^(?!train)[\w./-]*[/_.-]precision$"),
    ),
    "recall": (
        re.compile(r"^recall$"),
        re.compile(r"^(val|valid|validation|cleval)[/_.-]recall$"),
        re.compile(r"^(?!train)[\w./-]*[/_.-]recall$"),
    ),
    "hmean": (
        re.compile(r"^(hmean|f1)$"),
        re.compile(r"^(val|valid|validation|cleval)[/_.-](hmean|f1)$"),
        re.compile(r"^(?!train)[\w./-]*[/_.-](hmean|f1)$"),
    ),
    "validation_loss": (
        re.compile(r"^(validation_loss|val_loss)$"),
        re.compile(r"^(val|valid|validation)[/_.-]loss$"),
    ),
}

CANONICAL = tuple(_PATTERNS)


def match_canonical(metrics: Mapping[str, float]) -> dict[str, str]:
    """slot -> the logged name that fills it (finite numbers only; ratios within [0, 1])."""
    matched: dict[str, str] = {}
    names = [
        n for n, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    ]
    for slot, patterns in _PATTERNS.items():
        for pattern in patterns:
            name = next((n for n in names if pattern.match(n)), None)
            if name is not None:
                if slot == "validation_loss" or 0.0 <= metrics[name] <= 1.0:
                    matched[slot] = name
                break
    return matched


def canonical_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """The canonical slots filled from logged ``metrics``."""
    return {slot: float(metrics[name]) for slot, name in match_canonical(metrics).items()}
