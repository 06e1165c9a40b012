"""The boundary: every row is checked before it is written, whatever produced it.

A row may carry values from an untrusted file (a sidecar, a checkpoint's pickle, a W&B log). Before
the store writes it, :func:`check_record` makes it storable the same way on SQLite and PostgreSQL
(the bounds are :mod:`ckpt_index.storable`'s). Each column has a kind (:data:`COLUMN_KINDS`), and
each kind one check: whether a value fits, and the one-line problem when it does not.

Nothing heavy is imported here: the parsing worker checks the rows it builds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from ckpt_index.index.records import METADATA_COLUMNS, Record
from ckpt_index.storable import (
    INT64_MAX,
    INT64_MIN,
    INT_RANGES,
    MAX_METRIC_NAME,
    clean_text,
    finite_float,
    int_problem,
    show,
    text_problem,
)
from ckpt_index.vocabulary import CANONICAL_METRICS, MODES, PHASES

_INT, _FLOAT, _BOOL, _TEXT, _CHOICE = "int", "float", "bool", "text", "choice"
#: The kind of a column this module does not know (a newer revision's): judged by its value alone.
_OTHER = "other"
#: The kind of each column of ``checkpoints`` a record sets (a test keeps it in step with tables).
COLUMN_KINDS: dict[str, str] = {
    **dict.fromkeys(
        (
            "location",
            "checkpoint_path",
            "sidecar_path",
            "source",
            "status",
            "indexed_at",
            "unsafe_globals",
            "scan_error",
            "aliases",
        ),
        _TEXT,
    ),
    **dict.fromkeys(METADATA_COLUMNS, _TEXT),
    **dict.fromkeys(INT_RANGES, _INT),
    **dict.fromkeys(CANONICAL_METRICS, _FLOAT),
    **dict.fromkeys(
        (
            "encoder_pretrained",
            "encoder_frozen",
            "save_last",
            "checkpoint_exists",
            "stale",
            "is_last",
            "pinned",
        ),
        _BOOL,
    ),
    "mode": _CHOICE,
    "training_phase": _CHOICE,
}
_CHOICES = {
    "mode": frozenset(MODES),
    "training_phase": frozenset(PHASES),
}
#: Text a row carries about itself, repaired in any row rather than making it invalid.
_ROW_TEXT = frozenset({"error", "warnings", "inferred_fields", "indexed_at", "source", "status"})
#: Rows whose values a file vouches for: a bad value there makes the row invalid, never repaired.
_VOUCHED = frozenset({"valid"})


class UnstorableRecord(ValueError):
    """A record whose key (its checkpoint path) the index cannot hold."""


# --------------------------------------------------------------------------------------------
# One check per column kind: does a value fit, and if not, why (for a reason or a warning).


class _Check(NamedTuple):
    fits: Callable[[str, Any], bool]
    problem: Callable[[str, Any], str]


def _is_finite_float(value: Any) -> bool:
    return type(value) is float and value - value == 0.0  # inf - inf and nan - nan are nan


def _text_fits(_name: str, value: Any) -> bool:
    """``str`` without NUL or lone surrogates (no UTF-8 encoder accepts them)."""
    return (
        type(value) is str
        and "\x00" not in value
        and (value.isascii() or text_problem(value) is None)
    )


def _text_problem(_name: str, value: Any) -> str:
    if type(value) is not str:
        return f"expected text, got {show(value)}"
    return text_problem(value) or "not storable text"


def _int_fits(name: str, value: Any) -> bool:
    """An ``int`` (not a bool) within the column's range, ``storable.INT_RANGES``."""
    low, high = INT_RANGES[name]
    return type(value) is int and low <= value <= high


def _choice_problem(name: str, value: Any) -> str:
    return f"{show(value)} is not one of {', '.join(sorted(_CHOICES[name]))}"


def _other_fits(_name: str, value: Any) -> bool:
    """Any 64-bit integer, bool or finite float (text is judged as text)."""
    if type(value) is int:
        return INT64_MIN <= value <= INT64_MAX
    return type(value) is bool or _is_finite_float(value)


def _other_problem(_name: str, value: Any) -> str:
    problem = int_problem(value) if type(value) is int else None
    return problem or f"{show(value)} is not storable"


_CHECKS: dict[str, _Check] = {
    _TEXT: _Check(_text_fits, _text_problem),
    _INT: _Check(
        _int_fits,
        lambda name, value: int_problem(value, INT_RANGES[name]) or "not storable",
    ),
    _FLOAT: _Check(
        lambda _name, value: _is_finite_float(value),
        lambda _name, value: f"{show(value)} is not a finite number",
    ),
    _BOOL: _Check(
        lambda _name, value: type(value) is bool,
        lambda _name, value: f"expected true or false, got {show(value)}",
    ),
    _CHOICE: _Check(
        lambda name, value: type(value) is str and value in _CHOICES[name], _choice_problem
    ),
    _OTHER: _Check(_other_fits, _other_problem),
}


def _check_for(name: str, value: Any) -> _Check:
    kind = COLUMN_KINDS.get(name) or (_TEXT if type(value) is str else _OTHER)
    return _CHECKS[kind]


def _metric_fits(name: Any, value: Any) -> bool:
    return (
        type(name) is str
        and len(name) <= MAX_METRIC_NAME
        and _text_fits(name, name)
        and _is_finite_float(value)
    )


def _metric_problem(name: Any, value: Any) -> str:
    if type(name) is not str:
        return f"name is not text ({show(name)})"
    if len(name) > MAX_METRIC_NAME:
        return f"name longer than {MAX_METRIC_NAME} characters"
    if text_problem(name):
        return f"name {text_problem(name)}"
    return f"{show(value)} is not a finite number"


# --------------------------------------------------------------------------------------------
# The check itself


def check_record(record: Record) -> Record:
    """``record`` made storable, the same on every backend; ``record`` itself when it already is.

    Integer columns within their range (``storable.INT_RANGES``), floats finite, booleans bool,
    text ``str`` without NUL or lone surrogates, ``mode``/``training_phase`` among their choices;
    metric names ``str`` of at most ``MAX_METRIC_NAME`` characters with finite float values.

    - A row a file vouches for (``status == "valid"``: a sidecar, the training callback) with a
      bad metadata value becomes ``invalid``, with ``<column>: <problem>`` as its reason.
    - Any other row (inferred, unreadable, missing, invalid) is repaired: a bad value becomes
      None, bad text is cleaned (NUL dropped, lone surrogates become U+FFFD), and a warning says
      so. Bad metrics are dropped (or their names cleaned) with a warning, in any row.

    Raises:
        UnstorableRecord: ``checkpoint_path`` is not storable text (the caller should not have
            made a row for it; a sync refuses such names when it scans).
    """
    columns, metrics = record.columns, record.metrics
    bad = _bad_columns(columns)
    bad_metrics = _bad_metrics(metrics)
    path = columns.get("checkpoint_path")
    if type(path) is not str or "checkpoint_path" in bad or "location" in bad:
        raise UnstorableRecord(f"checkpoint path {show(path)} is not storable text")
    if not bad and not bad_metrics:
        return record
    reason = _vouched_problem(columns, bad)
    if reason is not None:
        return check_record(_invalid(record, reason))
    fixed, notes = _repair_columns(columns, bad)
    kept, metric_notes = _repair_metrics(metrics, bad_metrics)
    notes += metric_notes
    if notes:
        previous = [fixed["warnings"]] if fixed.get("warnings") else []
        fixed["warnings"] = "; ".join(previous + notes)
    return Record(fixed, kept, record.params, record.params_digest)


def _vouched_problem(columns: dict[str, Any], bad: Iterable[str]) -> str | None:
    """``"<column>: <problem>"`` for the first bad metadata value of a row a file vouches for."""
    if columns.get("status") not in _VOUCHED:
        return None
    for name in bad:
        if name in METADATA_COLUMNS and name not in _ROW_TEXT:
            return f"{name}: {_check_for(name, columns[name]).problem(name, columns[name])}"
    return None


def _bad_columns(columns: dict[str, Any]) -> list[str]:
    """The names of the columns whose value does not fit (``None`` always fits)."""
    bad = []
    kinds = COLUMN_KINDS
    # The common cases inline: the sync calls this on every row (the checks above are the rule).
    for name, value in columns.items():
        t = type(value)
        if t is str:
            kind = kinds.get(name)
            if kind is _TEXT and "\x00" not in value and value.isascii():
                continue
            if kind is _CHOICE and value in _CHOICES[name]:
                continue
        elif t is int:
            bounds = INT_RANGES.get(name)
            if bounds is not None and bounds[0] <= value <= bounds[1]:
                continue
        elif t is float:
            if kinds.get(name) is _FLOAT and value - value == 0.0:
                continue
        elif t is bool:
            if kinds.get(name) is _BOOL:
                continue
        if value is not None and not _check_for(name, value).fits(name, value):
            bad.append(name)
    return bad


def _bad_metrics(metrics: dict[str, float]) -> list[Any]:
    """The names of the metrics whose name or value does not fit."""
    return [
        name
        for name, value in metrics.items()
        # The common case first, inline: an ASCII name and a finite float.
        if not (
            type(name) is str
            and type(value) is float
            and value - value == 0.0
            and len(name) <= MAX_METRIC_NAME
            and "\x00" not in name
            and name.isascii()
        )
        and not _metric_fits(name, value)
    ]


def _repair_columns(
    columns: dict[str, Any], bad: Iterable[str]
) -> tuple[dict[str, Any], list[str]]:
    """``columns`` with each bad value cleaned (text) or emptied, and a note for each."""
    fixed = dict(columns)
    notes: list[str] = []
    for name in bad:
        value = columns[name]
        problem = _check_for(name, value).problem(name, value)
        repairable = type(value) is str and COLUMN_KINDS.get(name, _TEXT) is _TEXT
        fixed[name] = clean_text(value) if repairable else None
        if name not in _ROW_TEXT:  # repairing a warning need not be warned about
            outcome = "cleaned" if fixed[name] is not None else "not indexed"
            notes.append(f"{name}: {problem}; {outcome}")
    return fixed, notes


def _repair_metrics(
    metrics: dict[str, float], bad: Iterable[Any]
) -> tuple[dict[str, float], list[str]]:
    """``metrics`` with each bad one converted, renamed or dropped, and a note for each."""
    kept = dict(metrics)
    notes: list[str] = []
    for name in bad:
        value = kept.pop(name)
        number = finite_float(value)
        if type(name) is str and len(name) <= MAX_METRIC_NAME and number is not None:
            problem = text_problem(name)
            if problem is None:  # an int, or a float subclass such as numpy's: just a number
                kept[name] = number
                continue
            clean = clean_text(name)
            if clean not in kept and clean not in metrics:
                kept[clean] = number
                notes.append(f"metric {show(name)}: name {problem}; cleaned")
                continue
        notes.append(f"metric {show(name)}: {_metric_problem(name, value)}; not indexed")
    return kept, notes


def _invalid(record: Record, reason: str) -> Record:
    """``record`` as a row whose sidecar was rejected: file state kept, metadata emptied."""
    columns = dict(record.columns)
    columns.update(dict.fromkeys(METADATA_COLUMNS), source="none", status="invalid", error=reason)
    return Record(columns)
