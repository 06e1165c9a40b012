"""The product's words, defined once: training phases, the placeholder for an unknown name,
output formats, the fields results group by, and which logged metric is precision, recall,
hmean or the validation loss.

Lightning runs log names like ``val/hmean``, ``cleval/recall``, ``val_f1`` or ``val/loss``; the
sidecar has one canonical slot for each. The same rules serve the training callback and the
fallbacks, so a checkpoint gets the same canonical values whichever way it was indexed.

``precision``, ``recall`` and ``hmean`` (also ``f1``, ``f1_score``, ``fscore``) match as the last
part of a name; ``validation_loss`` is a ``loss`` in a validation namespace (``val/loss``,
``val_loss``, ``validation_loss``). Validation names win over bare names, bare names over other
namespaces, and training metrics never fill a slot. Lightning's ``_epoch`` suffix (a metric
logged per step and per epoch) is understood; the unsuffixed name wins a tie. Ratios outside
[0, 1] (a percentage, a count) stay out of the [0, 1] slots.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal, get_args

from ckpt_index.storable import finite_float

#: The phase of training a checkpoint comes from (the sidecar's ``training_phase``).
Phase = Literal["training", "validation", "finetuning"]
PHASES: tuple[str, ...] = get_args(Phase)
#: What the seeds wrote for a name no source gave; the index shows it as empty.
UNKNOWN = "unknown"
#: Result formats of ``query``, and the reports of the other commands.
RESULT_FORMATS = ("table", "json", "jsonl", "csv", "paths")
REPORT_FORMATS = ("text", "json")
#: Columns results can be grouped by (``--group-by``).
GROUPABLE = ("exp_name", "architecture", "encoder", "training_phase")
#: The directions of a ranking (a checkpoint's monitored ``mode``).
MODES = ("min", "max")

#: The metrics with a slot of their own: a sidecar field and a column of the index each.
CANONICAL_METRICS = ("precision", "recall", "hmean", "validation_loss")

_SEPARATORS = re.compile(r"[/_.\-]+")
_VALIDATION = frozenset({"val", "valid", "validation", "eval", "evaluation", "cleval"})
_TRAINING = frozenset({"train", "training"})
_LEAVES = {
    "precision": (("precision",),),
    "recall": (("recall",),),
    "hmean": (("hmean",), ("f1",), ("f1", "score"), ("f1score",), ("fscore",), ("f", "score")),
}
_EPOCH_SUFFIX = "_epoch"


def _split(name: str) -> tuple[list[str], bool]:
    """Lower-case tokens of a metric name, and whether it carried Lightning's ``_epoch`` suffix."""
    lowered = name.lower()
    suffixed = lowered.endswith(_EPOCH_SUFFIX) and len(lowered) > len(_EPOCH_SUFFIX)
    if suffixed:
        lowered = lowered[: -len(_EPOCH_SUFFIX)]
    return [t for t in _SEPARATORS.split(lowered) if t], suffixed


def _rank(name: str, slot: str) -> tuple[int, int, str] | None:
    """Sort key of ``name`` as a candidate for ``slot`` (lower is better); ``None`` if no match."""
    tokens, suffixed = _split(name)
    if slot == "validation_loss":
        if not tokens or tokens[-1] != "loss":
            return None
        return (0, int(suffixed), name) if set(tokens[:-1]) & _VALIDATION else None
    width = next((len(leaf) for leaf in _LEAVES[slot] if tuple(tokens[-len(leaf) :]) == leaf), 0)
    if not width:
        return None
    stage = set(tokens[:-width])
    if stage & _TRAINING:
        return None
    if stage & _VALIDATION:
        return (0, int(suffixed), name)
    return (1 if not stage else 2, int(suffixed), name)


def match_canonical(metrics: Mapping[str, float]) -> dict[str, str]:
    """slot -> the logged name that fills it (finite numbers only; ratios within [0, 1]).

    Any mapping is safe: names that are not text and values that are not finite numbers (NaN,
    an int beyond float range, a string) are passed over, never raised on.
    """
    numbers = {
        name: number
        for name, value in metrics.items()
        if isinstance(name, str) and (number := finite_float(value)) is not None
    }
    matched: dict[str, str] = {}
    for slot in CANONICAL_METRICS:
        candidates = sorted(key for name in numbers if (key := _rank(name, slot)) is not None)
        for _, _, name in candidates:
            if slot == "validation_loss" or 0.0 <= numbers[name] <= 1.0:
                matched[slot] = name
                break
    return matched


def canonical_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """The canonical slots filled from logged ``metrics``."""
    return {slot: float(metrics[name]) for slot, name in match_canonical(metrics).items()}
