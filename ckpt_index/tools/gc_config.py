"""The retention policy of ``ckpt-index gc`` from a file and from flags.

A cron job should not have to repeat the policy: ``ckpt-index.toml`` (table ``[gc]``) or
``pyproject.toml`` (table ``[tool.ckpt-index.gc]``) holds it, keys named as the long flags
(``keep_best`` or ``keep-best``). It is looked up in each root, then in the root's parents; the
first directory holding such a table wins, ``ckpt-index.toml`` before ``pyproject.toml`` (a
``pyproject.toml`` without the table does not stop the search: most projects have one). Flags
override the file. A key that is none of the flags, or a value of the wrong kind, is refused with
the key named: a policy that deletes files must not half-apply a typo.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckpt_index.tools.gc_plan import PER_CHOICES, GcPolicy

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10: the same parser, from PyPI
    import tomli as tomllib

#: The keys a config table may hold (the long flag names, ``-`` or ``_`` alike).
GC_KEYS = (
    "keep_best",
    "by",
    "per",
    "keep_last",
    "keep_every_epochs",
    "keep",
    "older_than",
    "include_active",
    "include_unranked",
    "trash",
)
#: File name -> the path of the table inside it.
CONFIG_FILES = (("ckpt-index.toml", ("gc",)), ("pyproject.toml", ("tool", "ckpt-index", "gc")))

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhdw]?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class GcConfigError(ValueError):
    """A policy that cannot be used: an unknown key, a bad value, a file that is no TOML (a
    usage error, exit 2)."""


@dataclass(frozen=True)
class GcConfig:
    """The ``gc`` table of one file: its values under their flag names (``_`` spelling)."""

    values: Mapping[str, Any] = field(default_factory=dict)
    source: str | None = None  # the file it came from; None: no file


def parse_duration(value: str | float | int, *, what: str = "--older-than") -> float:
    """``30m``, ``12h``, ``7d``, ``2w``, ``90s`` or plain seconds (``3600``) -> seconds."""
    if isinstance(value, bool):
        raise GcConfigError(f"{what}: expected a duration like 30m, 12h, 7d, 2w, not {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(value)
        if match is None:
            raise GcConfigError(
                f"{what}: {value!r} is no duration (use a number of seconds or a number with "
                "s, m, h, d or w: 30m, 12h, 7d, 2w)"
            )
        seconds = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if not math.isfinite(seconds) or seconds < 0:
        raise GcConfigError(f"{what}: {value!r} is no duration (must be >= 0)")
    return seconds


def find_gc_config(roots: Iterable[str | os.PathLike[str]]) -> Path | None:
    """The config file for ``roots``: in each root, then its parents upward, the first directory
    holding a ``gc`` table. Roots that find different files are an error (one policy per run)."""
    found: dict[Path, str] = {}
    for root in roots:
        path = _find_upward(Path(os.path.realpath(root)))
        if path is not None:
            found.setdefault(path, os.fspath(root))
    if len(found) > 1:
        listed = ", ".join(str(p) for p in found)
        raise GcConfigError(
            f"the roots have different gc config files ({listed}): name one with --config"
        )
    return next(iter(found), None)


def _find_upward(directory: Path) -> Path | None:
    for folder in (directory, *directory.parents):
        for name, table in CONFIG_FILES:
            candidate = folder / name
            if candidate.is_file() and _table(_read_toml(candidate), table, candidate) is not None:
                return candidate
    return None


def load_gc_config(
    roots: Iterable[str | os.PathLike[str]] = (), config: str | os.PathLike[str] | None = None
) -> GcConfig:
    """The ``gc`` table of ``config``, or of the file found for ``roots``; empty when none.

    Keys are checked (unknown: :class:`GcConfigError` naming the closest valid key) and values
    of the wrong type refused; the values come back under their ``_`` names, durations in
    seconds and ``keep`` as a tuple."""
    if config is not None:
        path = Path(config)
        if not path.is_file():
            raise GcConfigError(f"--config {os.fspath(config)}: no such file")
        # A pyproject.toml keeps it under [tool.ckpt-index.gc]; any other file under [gc].
        spec = dict(CONFIG_FILES)[
            "pyproject.toml" if path.name == "pyproject.toml" else "ckpt-index.toml"
        ]
        table = _table(_read_toml(path), spec, path)
        if table is None:
            raise GcConfigError(f"{path}: no [{'.'.join(spec)}] table")
    else:
        found = find_gc_config(roots)
        if found is None:
            return GcConfig()
        path = found
        spec = dict(CONFIG_FILES)[found.name]
        table = _table(_read_toml(found), spec, found)
        assert table is not None
    return GcConfig(_checked(table, path), str(path))


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise GcConfigError(f"{path}: cannot read it as TOML: {exc}") from None


def _table(data: Mapping[str, Any], spec: tuple[str, ...], path: Path) -> dict[str, Any] | None:
    node: Any = data
    for key in spec:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    if not isinstance(node, Mapping):
        raise GcConfigError(f"{path}: [{'.'.join(spec)}] must be a table")
    return dict(node)


def _checked(table: Mapping[str, Any], path: Path) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for raw_key, value in table.items():
        key = raw_key.replace("-", "_")
        if key not in GC_KEYS:
            raise GcConfigError(f"{path}: unknown key {raw_key!r}{_closest(key)}")
        if key in values:
            raise GcConfigError(f"{path}: {key!r} is given twice ({raw_key!r})")
        values[key] = _value(key, value, f"{path}: {raw_key}")
    return values


def _closest(key: str) -> str:
    import difflib

    match = difflib.get_close_matches(key, GC_KEYS, n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else f" (valid keys: {', '.join(GC_KEYS)})"


def _value(key: str, value: Any, where: str) -> Any:
    """``value`` checked for ``key``'s type (range checks are :func:`make_policy`'s)."""
    if key in ("keep_best", "keep_last", "keep_every_epochs"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise GcConfigError(f"{where}: expected an integer, not {value!r}")
        return value
    if key in ("include_active", "include_unranked"):
        if not isinstance(value, bool):
            raise GcConfigError(f"{where}: expected true or false, not {value!r}")
        return value
    if key == "older_than":
        return parse_duration(value, what=where)
    if key == "keep":
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
            raise GcConfigError(f"{where}: expected a glob or a list of globs, not {value!r}")
        return tuple(items)
    if not isinstance(value, str) or not value:
        raise GcConfigError(f"{where}: expected a non-empty string, not {value!r}")
    return value


def make_policy(config: GcConfig, **flags: Any) -> GcPolicy:
    """The policy of ``config`` with every flag given (not None, not empty) overriding it.

    ``flags`` are :class:`GcPolicy` fields (``older_than`` may be a duration string); ``trash``
    is not a policy field and is ignored here. Raises :class:`GcConfigError` for a policy that
    is incomplete or out of range."""
    merged = {k: v for k, v in config.values.items() if k != "trash"}
    for key, value in flags.items():
        if key == "trash" or value is None or (key == "keep" and not value):
            continue
        if key == "older_than":
            value = parse_duration(value)
        merged[key] = tuple(value) if key == "keep" else value
    return validated_policy(merged, source=config.source)


def validated_policy(fields: Mapping[str, Any], *, source: str | None = None) -> GcPolicy:
    """A :class:`GcPolicy` of ``fields``, refusing what no policy may say."""
    where = f" (in {source})" if source else ""
    missing = [flag for flag in ("keep_best", "by") if fields.get(flag) is None]
    if missing:
        names = " and ".join(f"--{m.replace('_', '-')}" for m in missing)
        raise GcConfigError(
            f"gc needs {names}: which checkpoints are the best to keep "
            "(or a [gc] table in ckpt-index.toml, or [tool.ckpt-index.gc] in pyproject.toml)"
        )
    keep_best = fields["keep_best"]
    if isinstance(keep_best, bool) or not isinstance(keep_best, int) or keep_best < 1:
        raise GcConfigError(
            f"keep_best must be >= 1{where}, not {keep_best!r}: the best is always kept"
        )
    for name in ("keep_last", "keep_every_epochs"):
        value = fields.get(name)
        if value is not None and (isinstance(value, bool) or value < 1):
            raise GcConfigError(f"{name} must be >= 1{where}, not {value!r}")
    per = fields.get("per", "exp_name")
    if per not in PER_CHOICES:
        raise GcConfigError(f"per must be one of {', '.join(PER_CHOICES)}{where}, not {per!r}")
    older_than = fields.get("older_than")
    if older_than is not None and (not math.isfinite(older_than) or older_than < 0):
        raise GcConfigError(f"older_than must be >= 0 seconds{where}, not {older_than!r}")
    known = {f for f in GcPolicy.__dataclass_fields__}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise GcConfigError(f"unknown policy field {unknown[0]!r}{_closest(unknown[0])}")
    values = dict(fields)
    if "keep" in values:
        values["keep"] = tuple(values["keep"])
    return GcPolicy(**values)
