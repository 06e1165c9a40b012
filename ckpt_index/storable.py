"""Which values the index can store, the same on SQLite and PostgreSQL.

A value from an untrusted file reaches a column only within these bounds: integers that fit their
column (``Integer`` is 32-bit on PostgreSQL, ``BigInteger`` 64-bit; SQLite takes 64 bits) and a
sane range, floats that are finite, text without NUL (PostgreSQL refuses it in ``text``) or lone
surrogates (no UTF-8 encoder accepts them; Python makes them from undecodable bytes and from
escapes such as ``"\\udc80"`` in YAML or JSON). The schema, the fallbacks and
:func:`ckpt_index.index.boundary.check_record` all use these definitions.

Nothing heavy is imported here: the query path and the parsing worker import this module.
"""

from __future__ import annotations

import re
from typing import Any

INT32_MAX = 2**31 - 1
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

#: The largest epoch (also max_epochs): ``epoch`` is an ``Integer`` column, 32-bit on PostgreSQL.
MAX_EPOCH = INT32_MAX
#: The largest global step: ``global_step`` is a ``BigInteger`` column.
MAX_GLOBAL_STEP = INT64_MAX
#: The largest ``save_top_k`` (an ``Integer`` column); -1 means "keep all".
MAX_SAVE_TOP_K = INT32_MAX
#: Metric names longer than this are not indexed (a name is a key users type, not a payload).
MAX_METRIC_NAME = 256

#: Inclusive bounds of the integer columns of ``checkpoints``.
INT_RANGES: dict[str, tuple[int, int]] = {
    "epoch": (0, MAX_EPOCH),
    "global_step": (0, MAX_GLOBAL_STEP),
    "max_epochs": (-1, MAX_EPOCH),
    "save_top_k": (-1, MAX_SAVE_TOP_K),
    "ckpt_size": (0, INT64_MAX),
    "ckpt_mtime_ns": (INT64_MIN, INT64_MAX),
    "sidecar_size": (0, INT64_MAX),
    "sidecar_mtime_ns": (INT64_MIN, INT64_MAX),
}
INT64_RANGE = (INT64_MIN, INT64_MAX)

_SURROGATE = re.compile("[\ud800-\udfff]")


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as text, or None (the common, all-ASCII case is cheap)."""
    if "\x00" in value:
        return "contains a NUL character"
    if not value.isascii() and _SURROGATE.search(value):
        return "contains a lone surrogate"
    return None


def clean_text(value: str) -> str:
    """``value`` with NUL removed and each lone surrogate replaced by U+FFFD."""
    return _SURROGATE.sub("\ufffd", value.replace("\x00", ""))


def int_problem(value: Any, bounds: tuple[int, int] = INT64_RANGE) -> str | None:
    """Why ``value`` is not an integer within ``bounds`` (inclusive), or None."""
    if type(value) is not int:  # bool is an int to Python, not to a reader of the index
        return f"expected an integer, got {show(value)}"
    low, high = bounds
    if low <= value <= high:
        return None
    return f"{show(value)} is out of range [{low}, {high}]"


def as_int(value: Any, *, minimum: int | None = None) -> int | None:
    """``value`` if it is an integer (not a bool) of at least ``minimum``, else None."""
    if type(value) is not int or (minimum is not None and value < minimum):
        return None
    return value


def as_float(value: Any) -> float | None:
    """A number as a float, NaN and infinities kept; None for bools, non-numbers and integers
    beyond float range. (:func:`finite_float` is the one for values the index stores.)"""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


def finite_float(value: Any) -> float | None:
    """``value`` as a finite float, or None (bools, non-numbers, NaN, infinities, huge ints)."""
    if type(value) is float:
        return value if value - value == 0.0 else None  # inf - inf and nan - nan are nan
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:  # an int beyond float range
            return None
        return value if value - value == 0.0 else None
    return None


def show(value: Any, limit: int = 60) -> str:
    """A short, ASCII-safe rendering of an untrusted value for a one-line reason or warning."""
    if isinstance(value, str):
        shown = ascii(value[:limit])
    elif type(value) is int and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    elif value is None or isinstance(value, (int, float)):
        shown = ascii(value)
    else:  # never render a container from a file whole: it may be huge or deep
        # A placeholder class from a pickle carries the file's name for it: shown escaped.
        kind = ascii(type(value).__name__)[1:-1][:limit]
        try:
            return f"a {kind} of {len(value)} items"
        except Exception:  # noqa: BLE001 - len() of any object a pickle made
            return f"a {kind}"
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."
