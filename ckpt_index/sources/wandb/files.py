"""A W&B run read from its local files, without network: :func:`read_run`.

Online runs keep ``files/config.yaml``, ``files/wandb-summary.json`` and
``files/wandb-metadata.json``; offline and online runs both keep the ``run-<id>.wandb``
transaction log (read by :mod:`ckpt_index.sources.wandb.log`). The files are the final snapshot
of what the log records step by step, so their config wins over the log's.

Every local file is untrusted: it is opened without blocking through :mod:`ckpt_index.safe_io`,
refused by size before it is read (:data:`MAX_FILE_BYTES`) and parsed under limits:
``files/config.yaml`` with the sidecars' guarded YAML loader, JSON files as plain data no deeper
than :data:`~ckpt_index.sidecar.files.MAX_DEPTH` levels. :func:`read_run` does not raise for any
file content: what cannot be read becomes an entry of :attr:`WandbRun.warnings`.
"""

from __future__ import annotations

import copy
import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

from ckpt_index.safe_io import UnsafeFileError, read_bounded
from ckpt_index.sidecar.files import MAX_DEPTH, SidecarError
from ckpt_index.sources.hydra import parse_config_bytes, plain_data
from ckpt_index.sources.wandb.locate import RunLocation, is_dir
from ckpt_index.sources.wandb.log import read_log
from ckpt_index.sources.wandb.run import WandbRun, clean_name, user_config, uses_lightning_steps

#: ``files/config.yaml``, ``wandb-summary.json`` and ``wandb-metadata.json`` are a few KB to a
#: few hundred KB; a summary holding large tables may reach a few MB.
MAX_FILE_BYTES = 16 << 20

#: Runs read in this process, keyed by the signature of their files (:func:`_signature`).
_read_cache: OrderedDict[tuple, WandbRun] = OrderedDict()
_READ_CACHE_SIZE = 16

#: The files :func:`read_run` reads besides the logs; a change to any of them invalidates its
#: cache.
_RUN_FILES = ("files/config.yaml", "files/wandb-summary.json", "files/wandb-metadata.json")


def _read_config_yaml(path: Path) -> tuple[dict[str, Any], Any]:
    """``files/config.yaml`` -> (config, the ``_wandb`` value); raises SidecarError or
    UnsafeFileError."""
    data = parse_config_bytes(read_bounded(path, MAX_FILE_BYTES, what="W&B config"), path)
    config: dict[str, Any] = {}
    internal = None
    for key, entry in data.items():
        # Both shapes wandb has written: {value: X} and {desc: ..., value: X}.
        wrapped = isinstance(entry, dict) and "value" in entry and set(entry) <= {"value", "desc"}
        value = entry["value"] if wrapped else entry
        if key == "_wandb":
            internal = value
        elif key != "wandb_version":
            config[str(key)] = value
    return config, internal


def _read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object file as plain data; raises ValueError or UnsafeFileError."""
    try:
        data = json.loads(read_bounded(path, MAX_FILE_BYTES, what=what))
    except RecursionError:
        raise ValueError(f"JSON nests deeper than {MAX_DEPTH} levels") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return plain_data(data)


def _log_files(run_dir: Path) -> list[Path]:
    try:
        return sorted(run_dir / e.name for e in os.scandir(run_dir) if e.name.endswith(".wandb"))
    except OSError:
        return []


def _log_file(run_dir: Path, run_id: str) -> Path | None:
    # Only names and lstat here: whatever the file is, reading it goes through safe_io, which
    # refuses a FIFO without blocking and says so in the run's warnings.
    exact = run_dir / f"run-{run_id}.wandb"
    if os.path.lexists(exact):
        return exact
    others = _log_files(run_dir)
    return others[0] if others else None


def _signature(run_dir: Path) -> tuple:
    parts = []
    for path in [*_log_files(run_dir), *(run_dir / name for name in _RUN_FILES)]:
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            continue
        parts.append((path.name, st.st_ino, st.st_size, st.st_mtime_ns))
    return (str(run_dir),) + tuple(parts)


def read_run(location: RunLocation) -> WandbRun | None:
    """Read a run from its local files, without network.

    Online runs keep ``files/config.yaml`` and ``files/wandb-summary.json``; offline and online
    runs keep the ``run-<id>.wandb`` transaction log, whose run, config, summary, metric and
    history records are read with wandb's protobuf classes. Without wandb importable the log is
    skipped (one warning) and only ``files/`` is read. None when the location has no local run
    directory (only an id: try :func:`~ckpt_index.sources.wandb.online.fetch_online`); a
    directory with nothing readable gives a run with ``source == "none"``. Answers are cached per
    process until the files change.

    Example::

        run = read_run(find_run(ckpt))
        run.config["model"]["architecture"], run.checkpoint_metrics(640)
        # a Lightning-logged run: the rows at trainer/global_step 639, not the summary
    """
    if location.run_dir is None or not is_dir(location.run_dir):
        return None
    key = _signature(location.run_dir)
    cached = _read_cache.get(key)
    if cached is not None:
        _read_cache.move_to_end(key)
        return _copy_run(cached, location)
    run = _read_uncached(location, location.run_dir)
    _read_cache[key] = run
    while len(_read_cache) > _READ_CACHE_SIZE:
        _read_cache.popitem(last=False)
    return _copy_run(run, location)


def _read_uncached(location: RunLocation, run_dir: Path) -> WandbRun:
    run = WandbRun(location.run_id, run_dir=run_dir)
    sources = []
    log = _log_file(run_dir, location.run_id)
    if log is not None and read_log(log, run):
        sources.append("log")
    if _read_files(run_dir / "files", run):
        sources.insert(0, "files")
    run.summary.pop("_wandb", None)
    run.config = user_config(run.config)
    # What the run recorded beats what the location guessed from paths.
    run.project = run.project or clean_name(run.metadata.get("project")) or location.project or None
    run.entity = run.entity or clean_name(run.metadata.get("entity")) or location.entity or None
    run.source = "+".join(sources) or "none"
    return run


def _read_files(files: Path, run: WandbRun) -> bool:
    """Fill ``run`` from ``files/``; whether any of its files could be read."""
    found = False
    config_yaml = files / "config.yaml"
    file_config: dict[str, Any] = {}
    internal = None
    if os.path.lexists(config_yaml):
        try:
            file_config, internal = _read_config_yaml(config_yaml)
            found = True
        except (SidecarError, UnsafeFileError) as exc:
            run.warnings.append(f"{config_yaml}: unreadable ({exc.reason})")
    # The files are the final snapshot of what the log records step by step.
    run.config.update(file_config)
    if isinstance(internal, dict) and uses_lightning_steps(internal.get("m")):
        run.lightning_steps = True
    for name, target, what in (
        ("wandb-summary.json", run.summary, "W&B summary"),
        ("wandb-metadata.json", run.metadata, "W&B metadata"),
    ):
        path = files / name
        if not os.path.lexists(path):
            continue
        try:
            target.update(_read_json(path, what))
            found = True
        except UnsafeFileError as exc:
            run.warnings.append(f"{path}: unreadable ({exc.reason})")
        except ValueError as exc:
            run.warnings.append(f"{path}: unreadable ({' '.join(str(exc).split())})")
    return found


def _copy_run(run: WandbRun, location: RunLocation) -> WandbRun:
    # config, summary and warnings are small and callers merge them; the history is shared.
    return WandbRun(
        run.run_id,
        run.project or location.project,
        run.entity or location.entity,
        run.run_dir,
        copy.deepcopy(run.config),
        copy.deepcopy(run.summary),
        copy.deepcopy(run.metadata),
        run.lightning_steps,
        run.source,
        list(run.warnings),
        run.history,
    )
