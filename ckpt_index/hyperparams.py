"""Hyperparameters as the index stores them: flat dotted names, each with a typed value.

A training config is nested (``model: {optimizer: {lr: 0.01}}``); the index keeps one entry per
leaf, named by its dotted path (``model.optimizer.lr``), so that ``params.model.optimizer.lr``
can be filtered, sorted and grouped on like a column. Every source (the sidecar's
``hyperparameters``, a checkpoint's ``hyper_parameters``, a Hydra config, a W&B run config) goes
through :func:`flatten`, which bounds what an untrusted file can make the index store: at most
:data:`MAX_PARAMS` entries, names of at most :data:`MAX_PARAM_NAME` characters, values of at most
:data:`MAX_VALUE_BYTES` bytes, nesting of at most :data:`MAX_DEPTH` levels. Past a bound the rest
is dropped with a warning (the row keeps it); a config never fails a sync.

A value is stored as a :data:`Param` tuple ``(name, value_type, numeric_value, text_value,
source, overridden)``:

- ``value_type``: ``int``, ``float``, ``bool``, ``str``, ``null`` or ``json`` (a list, or an empty
  mapping, kept as JSON text);
- ``numeric_value``: the number for ``int`` and finite ``float`` values (numbers compare as
  numbers), else None;
- ``text_value``: the value's text for every type but ``null`` (``0.01``, ``true``, ``adam``,
  ``[1,2]``): strings compare as strings, and the text of a number is what tables show;
- ``source``: where it came from (``sidecar``, ``checkpoint``, ``hydra``, ``wandb``);
- ``overridden``: the name was set by a Hydra override (``overrides.yaml``): what a sweep varied.

Nothing heavy is imported here: the worker, the index and the query path all use this module.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from ckpt_index.storable import clean_text, show, text_problem

#: At most this many parameters per checkpoint; the rest are dropped with a warning.
MAX_PARAMS = 2000
#: Parameter names longer than this are dropped (a name is a key users type, not a payload).
MAX_PARAM_NAME = 200
#: Values whose text is longer than this many UTF-8 bytes are dropped. Below PostgreSQL's B-tree
#: entry limit (2712 bytes) with a name, so ``(name, text_value)`` can be indexed on both backends.
MAX_VALUE_BYTES = 2048
#: Mappings nested deeper than this are kept as one JSON value at that depth (when it fits).
MAX_DEPTH = 16
#: At most this many containers are visited per source (a huge list is one value, not a walk).
MAX_VISITED = 20_000

#: A stored parameter: (name, value_type, numeric_value, text_value, source, overridden).
Param = tuple[str, str, float | None, str | None, str, bool]

VALUE_TYPES = ("int", "float", "bool", "str", "null", "json")

#: The prefix that names a parameter in queries: ``params.model.optimizer.lr``.
PREFIX = "params."


class _Budget:
    """What one :func:`flatten` call may still add, and the warnings about what it dropped."""

    def __init__(self, max_params: int) -> None:
        self.left = max_params
        self.visited = 0
        self.dropped: dict[str, int] = {}
        self.first: dict[str, str] = {}

    def drop(self, why: str, name: str) -> None:
        self.dropped[why] = self.dropped.get(why, 0) + 1
        self.first.setdefault(why, name)

    def warnings(self, source: str) -> list[str]:
        out = []
        for why, count in self.dropped.items():
            first = show(self.first[why], 60)
            more = f" and {count - 1} more" if count > 1 else ""
            out.append(f"{source} hyperparameters: {why}: dropped {first}{more}")
        return out


def flatten(
    config: Any,
    source: str,
    *,
    overridden: Iterable[str] = (),
    skip_private: bool = False,
    max_params: int = MAX_PARAMS,
) -> tuple[dict[str, Param], list[str]]:
    """``config`` (a nested mapping) as parameters by dotted name; warnings for what was dropped.

    ``overridden``: names set by Hydra overrides (marked on the entry of that name). With
    ``skip_private``, keys starting with ``_`` are left out at every level (W&B's ``_wandb``).
    A ``config`` that is not a mapping gives nothing.
    """
    if not isinstance(config, Mapping):
        return {}, []
    marked = frozenset(overridden)
    out: dict[str, Param] = {}
    budget = _Budget(max_params)
    # Iterative, depth-first in the mapping's own order: the first MAX_PARAMS leaves are kept.
    stack: list[tuple[str, Any, int]] = [("", config, 0)]
    while stack:
        prefix, value, depth = stack.pop()
        kind = type(value)
        if (
            (kind is dict or (kind not in _LEAF_TYPES and isinstance(value, Mapping)))
            and value
            and depth < MAX_DEPTH
        ):
            budget.visited += 1
            if budget.visited > MAX_VISITED:
                budget.drop("too many nested mappings", prefix or "(top)")
                continue
            children = []
            for key, item in value.items():
                name = key if type(key) is str else _key_text(key)
                if skip_private and name.startswith("_"):
                    continue
                children.append((f"{prefix}.{name}" if prefix else name, item, depth + 1))
            stack.extend(reversed(children))
            continue
        if not prefix:
            continue
        if budget.left <= 0:
            budget.drop(f"more than {max_params} parameters", prefix)
            continue
        if len(prefix) > MAX_PARAM_NAME:
            budget.drop(f"a name longer than {MAX_PARAM_NAME} characters", prefix)
            continue
        if ("\x00" in prefix or not prefix.isascii()) and text_problem(prefix):
            prefix = clean_text(prefix)
        param = make_param(prefix, value, source, prefix in marked)
        if param is None:
            budget.drop(f"a value longer than {MAX_VALUE_BYTES} bytes", prefix)
            continue
        if prefix in out:  # "a.b" as a key and as a path: the first one stays
            continue
        out[prefix] = param
        budget.left -= 1
    return out, budget.warnings(source)


def _key_text(key: Any) -> str:
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, (bool, int, float)):
        return json.dumps(key) if not isinstance(key, float) or math.isfinite(key) else str(key)
    return show(key, 40)


def make_param(name: str, value: Any, source: str, overridden: bool = False) -> Param | None:
    """One parameter, or None when its text is longer than :data:`MAX_VALUE_BYTES`."""
    value_type, numeric, text = encode_value(value)
    if text is not None and len(text) > MAX_VALUE_BYTES // 4 and _utf8_len(text) > MAX_VALUE_BYTES:
        return None
    return (name, value_type, numeric, text, source, overridden)


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


#: Types that are never mappings (checked by identity before the slower ``isinstance``).
_LEAF_TYPES = frozenset({str, int, float, bool, type(None), list})


def encode_value(value: Any) -> tuple[str, float | None, str | None]:
    """(value_type, numeric_value, text_value) of one leaf value."""
    kind = type(value)  # the common exact types first; subclasses take the checks below
    if kind is str:
        return "str", None, clean_text(value) if text_problem(value) else value
    if kind is float:
        return "float", value if math.isfinite(value) else None, _float_text(value)
    if kind is int and -(2**53) <= value <= 2**53:
        return "int", float(value), str(value)
    if value is None:
        return "null", None, None
    if isinstance(value, bool):
        return "bool", None, "true" if value else "false"
    if isinstance(value, int):
        if value.bit_length() > 1000:  # beyond float range: text only (and str() is bounded)
            return "str", None, f"an integer of {value.bit_length()} bits"
        return "int", float(value), str(value)
    if isinstance(value, float):
        return "float", value if math.isfinite(value) else None, _float_text(value)
    if isinstance(value, str):
        return "str", None, clean_text(value) if text_problem(value) else value
    if isinstance(value, (bytes, bytearray)):
        return "str", None, show(bytes(value), MAX_VALUE_BYTES)
    return "json", None, _json_text(value)


def _float_text(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return repr(value)


def _json_text(value: Any) -> str:
    """Compact JSON of a list or mapping, bounded: a huge value is cut to just past the limit
    (and then dropped by :func:`make_param`), never built whole."""
    parts: list[str] = []
    size = 0
    for chunk in _json_encoder.iterencode(_plain(value, 0)):
        parts.append(chunk)
        size += len(chunk)
        if size > MAX_VALUE_BYTES:
            break
    return "".join(parts)


def _plain(value: Any, depth: int) -> Any:
    """``value`` as JSON-able data (tuples as lists, other objects as their short text)."""
    if value is None or isinstance(value, (bool, int, str)):
        if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
            return show(value)
        return clean_text(value) if isinstance(value, str) and text_problem(value) else value
    if isinstance(value, float):
        return value if math.isfinite(value) else _float_text(value)
    if depth > MAX_DEPTH:
        return "..."
    if isinstance(value, Mapping):
        return {_key_text(k): _plain(v, depth + 1) for k, v in _bounded(value.items())}
    if isinstance(value, (list, tuple)):
        return [_plain(v, depth + 1) for v in _bounded(value)]
    return show(value)


def _bounded(items: Iterable[Any], limit: int = MAX_VALUE_BYTES) -> Iterable[Any]:
    """At most ``limit`` items: each takes at least one byte of JSON, so more never fit."""
    for index, item in enumerate(items):
        if index >= limit:
            yield ("...", "...") if isinstance(item, tuple) and len(item) == 2 else "..."
            return
        yield item


_json_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def decode_value(value_type: str, numeric: float | None, text: str | None) -> Any:
    """The Python value of a stored parameter (what JSON output shows)."""
    if value_type == "null" or text is None:
        return None
    if value_type == "int":
        try:
            return int(text)
        except ValueError:
            return numeric
    if value_type == "float":
        return numeric if numeric is not None else text  # nan / inf stay text in JSON
    if value_type == "bool":
        return text == "true"
    if value_type == "json":
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


def merge(*layers: Mapping[str, Param]) -> dict[str, Param]:
    """Parameters from several sources: for each name, the first layer that has it wins.

    A name marked overridden in any layer stays marked (the override is a fact about the run,
    whichever source gave the value).
    """
    out: dict[str, Param] = {}
    marked: set[str] = set()
    for layer in layers:
        for name, param in layer.items():
            if param[5]:
                marked.add(name)
            out.setdefault(name, param)
    for name in marked:
        param = out[name]
        if not param[5]:
            out[name] = (*param[:5], True)
    return out


def override_names(overrides: Any) -> list[str]:
    """The dotted names a Hydra ``overrides.yaml`` list sets: ``model.lr=0.1`` -> ``model.lr``;
    ``+x=1`` and ``++x=1`` add or force ``x``; ``~x`` (a deletion) sets nothing."""
    if not isinstance(overrides, (list, tuple)):
        return []
    names = []
    for item in overrides[:MAX_PARAMS]:
        if not isinstance(item, str) or "=" not in item or item.startswith("~"):
            continue
        name = item.split("=", 1)[0].strip().lstrip("+")
        if "@" in name:  # a package override (`db@backup=mysql`) names a config group
            name = name.split("@", 1)[0]
        if name and len(name) <= MAX_PARAM_NAME:
            names.append(name)
    return names


def digest(params: Iterable[Param]) -> str:
    """A content hash of a parameter set, in name order: checkpoints with the same parameters
    (every checkpoint of a run) share one stored set."""
    # The repr of the sorted tuples: each field is a str, a float, a bool or None, whose repr is
    # exact and tells them apart; a quarter of the cost of JSON per entry.
    text = repr(sorted(params))
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def as_rows(params: Mapping[str, Param]) -> list[Param]:
    """The parameters in name order (the order they are stored and shown in)."""
    return [params[name] for name in sorted(params)]


def to_object(params: Iterable[Param]) -> dict[str, Any]:
    """``{name: value}`` of stored parameters, in name order (the JSON ``params`` object)."""
    return {p[0]: decode_value(p[1], p[2], p[3]) for p in sorted(params)}
