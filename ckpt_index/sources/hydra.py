"""Hydra run configs as a metadata source.

One rule finds the config of a checkpoint's run, for the sync and for the Lightning callback
(:func:`find_hydra_config`): a config saved beside the checkpoint (``X.config.yaml``, then
``X.resolved.config.json``), else the nearest ``.hydra/config.yaml`` in the checkpoint's folder or
up to :data:`MAX_LEVELS_UP` folders above it. The nearest wins, so searching far up never
overrides a run's own config; it is needed because Lightning's logger layout puts checkpoints
three levels below the Hydra run directory (``<run>/lightning_logs/version_0/checkpoints/``) and a
multirun sweep adds more. Interpolations are not resolved, so ``${hydra:runtime.output_dir}`` or
``${now:...}`` stay text instead of failing.

A config is untrusted input like any file under a synced root: it is opened without blocking,
refused by size before it is read (:data:`MAX_CONFIG_BYTES`), parsed with the sidecars' guarded
YAML loader, refused when it nests deeper than :data:`MAX_DEPTH` levels, and handed back as plain
JSON-able data (:func:`plain_data`: dates as ISO strings, string keys). Every failure is a
:class:`~ckpt_index.sidecar.files.SidecarError` with a one-line reason.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import stat
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

from ckpt_index.safe_io import UnsafeFileError, read_bounded
from ckpt_index.sidecar.files import CKPT_SUFFIX, MAX_DEPTH, SidecarError, parse_yaml_bytes
from ckpt_index.sources.config_fields import MAX_NAME_CHARS, fields_from_config, is_name
from ckpt_index.storable import clean_text

__all__ = [
    "MAX_NAME_CHARS",
    "candidate_paths",
    "find_hydra_config",
    "is_name",
    "load_config",
    "load_overrides",
    "model_fields",
    "parse_config_bytes",
    "plain_data",
]

#: Folders above the checkpoint's own searched for ``.hydra/config.yaml`` (an outputs tree is
#: rarely deeper).
MAX_LEVELS_UP = 8
#: A Hydra config is a few KB; a composed one with large lists inlined stays far below this.
MAX_CONFIG_BYTES = 2 << 20
#: Values (scalars and containers) :func:`plain_data` takes at most: a config or a W&B summary
#: holds hundreds to thousands; this bounds the cost of any later copy of the result.
MAX_VALUES = 500_000
#: ``overrides.yaml`` lists the command line's overrides: a few hundred bytes.
MAX_OVERRIDES_BYTES = 256 << 10
#: Overrides kept from one ``overrides.yaml``, and the longest one kept (in characters).
MAX_OVERRIDES = 2000
MAX_OVERRIDE_CHARS = 4096


def candidate_paths(ckpt_path: str | Path) -> list[Path]:
    """Where the config of ``ckpt_path``'s run may be, in the order :func:`find_hydra_config`
    tries them."""
    ckpt = Path(ckpt_path)
    stem = ckpt.name[: -len(CKPT_SUFFIX)] if ckpt.name.endswith(CKPT_SUFFIX) else ckpt.stem
    paths = [ckpt.with_name(stem + ".config.yaml"), ckpt.with_name(stem + ".resolved.config.json")]
    folder = ckpt.parent
    for directory in [folder, *list(folder.parents)[:MAX_LEVELS_UP]]:
        paths.append(directory / ".hydra" / "config.yaml")
    return paths


def _is_regular(path: Path) -> bool:
    # stat never blocks, even on a FIFO; Path.is_file() raises on EACCES, which must not stop a
    # sync.
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def find_hydra_config(ckpt_path: str | Path) -> Path | None:
    """The config file that describes the run of ``ckpt_path``, or None (the module's rule).

    The one look-up for every caller: the sync's fallback metadata, and the Lightning
    callback's ``hydra_config_path`` outside a running Hydra app. Only regular files count: a
    FIFO or a directory named ``config.yaml`` is passed over.
    """
    return next((p for p in candidate_paths(ckpt_path) if _is_regular(p)), None)


def load_config(path: str | Path) -> dict[str, Any]:
    """A config as plain JSON-able data, interpolations left unresolved.

    Raises :class:`SidecarError` (and nothing else) when the file is unusable. The checkpoints of
    a run share its config: it is parsed once per (path, inode, size, mtime).
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise SidecarError(path, f"Hydra config cannot be read: {reason}") from None
    key = (os.fspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    return copy.deepcopy(_load_config(*key))


@functools.lru_cache(maxsize=64)
def _load_config(name: str, _dev: int, _ino: int, _size: int, _mtime_ns: int) -> dict[str, Any]:
    path = Path(name)
    try:
        data = read_bounded(path, MAX_CONFIG_BYTES, what="Hydra config")
    except UnsafeFileError as exc:
        raise SidecarError(path, exc.reason) from None
    return parse_config_bytes(data, path)


def load_overrides(path: str | Path) -> list[str] | None:
    """A run's ``.hydra/overrides.yaml`` (``["model.lr=0.1", ...]``), None when there is none.

    Untrusted like the config: bounded in size, depth and count, parsed with the guarded YAML
    loader; entries that are not text, or longer than :data:`MAX_OVERRIDE_CHARS`, are left out.
    Raises :class:`SidecarError` when the file exists but is unusable.
    """
    path = Path(path)
    if not _is_regular(path):
        return None
    try:
        data = read_bounded(path, MAX_OVERRIDES_BYTES, what="Hydra overrides")
    except UnsafeFileError as exc:
        raise SidecarError(path, exc.reason) from None
    # The guarded loader takes mappings only: the list is parsed as the value of one key.
    indented = b"\n".join(b"  " + line for line in data.splitlines())
    document = parse_yaml_bytes(
        b"overrides:\n" + indented,
        path,
        max_bytes=2 * MAX_OVERRIDES_BYTES,
        scan_depth=True,
        max_nodes=MAX_OVERRIDES * 4,
    )
    items = document.get("overrides")
    if items is None:
        return []
    if not isinstance(items, list):
        raise SidecarError(path, f"expected a list of overrides, got {type(items).__name__}")
    return [
        clean_text(item)
        for item in items[:MAX_OVERRIDES]
        if isinstance(item, str) and len(item) <= MAX_OVERRIDE_CHARS
    ]


def parse_config_bytes(data: bytes, path: str | Path = "<config>") -> dict[str, Any]:
    """A Hydra (or W&B) config from untrusted bytes as plain data; raises :class:`SidecarError`.

    ``*.json`` paths are read as JSON, anything else as YAML.
    """
    path = Path(path)
    if path.suffix == ".json":
        if len(data) > MAX_CONFIG_BYTES:
            raise SidecarError(
                path, f"file is {len(data):,} bytes, over the {MAX_CONFIG_BYTES:,}-byte limit"
            )
        try:
            document = json.loads(data)
        except ValueError as exc:  # also UnicodeDecodeError and 5,000-digit integers
            raise SidecarError(path, f"JSON error: {' '.join(str(exc).split())}") from None
        except RecursionError:
            raise SidecarError(path, f"JSON nests deeper than {MAX_DEPTH} levels") from None
        if not isinstance(document, dict):
            raise SidecarError(path, "expected a mapping at the top level")
    else:
        document = parse_yaml_bytes(
            data, path, max_bytes=MAX_CONFIG_BYTES, scan_depth=True, max_nodes=MAX_VALUES
        )
    try:
        return plain_data(document)
    except ValueError as exc:
        raise SidecarError(path, str(exc)) from None


def _plain_text(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates (a JSON "\ud800") cannot be stored or printed; keep the rest of the text.
        return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in text)
    return text


def _plain_scalar(value: Any) -> Any:
    if isinstance(value, str):
        return _plain_text(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, (date, datetime, time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value):,} bytes>"
    return f"<{type(value).__name__}>"


def _plain_key(key: Any) -> str:
    if isinstance(key, str):
        return _plain_text(key)
    if key is None or isinstance(key, (bool, int, float)):
        return json.dumps(key)  # what a JSON encoder makes of such a key: "null", "true", "1"
    return str(_plain_scalar(key))


def plain_data(value: Any, *, max_depth: int = MAX_DEPTH) -> Any:
    """``value`` as plain JSON-able data: string-keyed dicts, lists, str, int, float, bool, None.

    Dates and times become ISO 8601 strings (``created: 2024-01-01`` is an ordinary config
    value), sets sorted lists, lone surrogates U+FFFD, anything else a ``<type>`` text. Iterative,
    so any depth costs no Python recursion; raises ValueError past ``max_depth`` levels of
    containers or :data:`MAX_VALUES` values in all, which also ends any cycle.
    """
    root: list[Any] = [None]
    stack: list[tuple[Any, Any, Any, int]] = [(value, root, 0, 0)]
    count = 0
    while stack:
        item, parent, slot, depth = stack.pop()
        if depth >= max_depth:
            raise ValueError(f"nests deeper than {max_depth} levels")
        if isinstance(item, (dict, list, tuple, set, frozenset)):
            count += len(item)
            if count > MAX_VALUES:
                raise ValueError(f"holds more than {MAX_VALUES:,} values")
        if isinstance(item, dict):
            out: Any = {}
            for key, child in item.items():
                plain_key = _plain_key(key)
                if type(child) in _PLAIN:  # most values: no trip through the stack
                    out[plain_key] = child
                else:
                    out[plain_key] = None  # keeps the source's key order
                    stack.append((child, out, plain_key, depth + 1))
        elif isinstance(item, (list, tuple, set, frozenset)):
            children = sorted(item, key=repr) if isinstance(item, (set, frozenset)) else item
            out = list(children)
            for i, child in enumerate(out):
                if type(child) not in _PLAIN:
                    stack.append((child, out, i, depth + 1))
        else:
            out = _plain_scalar(item)
        parent[slot] = out
    return root[0]


#: Types :func:`plain_data` keeps as they are (``_plain_scalar`` checks a str for surrogates).
_PLAIN = frozenset({int, float, bool, type(None)})


def model_fields(config: dict[str, Any]) -> dict[str, Any]:
    """architecture, encoder, decoder, head, loss, exp_name and wandb_run_id a config gives.

    The mapping is :func:`ckpt_index.sources.config_fields.fields_from_config`: the seeds'
    layout (``model.architecture``, ``model.component_overrides.*``) and flatter ones
    (``architecture_name``, ``encoder: {model_name: ...}``) as stored in hparams; only names are
    returned.
    """
    return fields_from_config(config)
