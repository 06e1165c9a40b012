"""W&B runs as a metadata source for checkpoints without a sidecar (SPEC section 8).

Three steps, each usable on its own from a notebook:

- :func:`find_run` locates the run of a checkpoint on disk: a ``wandb/run-*-<id>`` or
  ``wandb/offline-run-*-<id>`` directory near the run directory, Lightning's default
  ``<save_dir>/<project>/<run_id>/checkpoints`` layout, or run ids the caller found elsewhere
  (hparams, the Hydra config).
- :func:`read_run` reads a run from local files only: ``files/config.yaml``,
  ``files/wandb-summary.json`` and ``files/wandb-metadata.json`` of online runs, and the
  ``run-<id>.wandb`` transaction log that offline and online runs both keep.
- :func:`fetch_online` asks the W&B API (``--wandb-online``), bounded by a timeout and cached in
  the index table ``wandb_run_cache``.

Metric values for a checkpoint come from the run *history* at the checkpoint's step
(:meth:`WandbRun.checkpoint_metrics`), never from the summary, which holds the last step's values.

Lightning's ``WandbLogger`` logs ``trainer/global_step`` as the count of batches that stepped
*before* the current one is counted: the metrics of the training batch and the validation that
precede a checkpoint saved at ``global_step`` N are logged with ``trainer/global_step`` N - 1.
:meth:`WandbRun.checkpoint_metrics` accounts for that when the run carries the logger's
``define_metric("*", step_metric="trainer/global_step")``; :meth:`WandbRun.history_at_step` is the
plain lookup by logged step.

Every local file is untrusted: it is opened without blocking through :mod:`ckpt_index.safe_io`
(a FIFO named ``run-x.wandb`` is refused at once), refused by size before it is read, and parsed
under limits: ``files/config.yaml`` with the sidecars' guarded YAML loader, JSON files capped at
:data:`MAX_FILE_BYTES`, transaction logs at :data:`MAX_LOG_BYTES` with bounded records
(:data:`MAX_RECORD_BYTES`, :data:`MAX_LOG_RECORDS`, :data:`MAX_LOG_ITEMS`) and bounded stored
values (:data:`MAX_HISTORY_VALUES`, :data:`MAX_UPDATE_KEYS`). Values come back as plain JSON-able
data no deeper than :data:`~ckpt_index.sidecar.files.MAX_DEPTH` levels. :func:`find_run`,
:func:`read_run` and :func:`model_fields_from_config` do not raise for any file content: what
cannot be read becomes an entry of :attr:`WandbRun.warnings`.

wandb is imported only inside the functions that need it; importing this module stays cheap.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import netrc
import os
import re
import stat
import struct
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ckpt_index.safe_io import UnsafeFileError, open_regular, read_bounded
from ckpt_index.sidecar.files import MAX_DEPTH, SidecarError
from ckpt_index.sources.hydra import is_name, parse_config_bytes, plain_data
from ckpt_index.sources.naming import run_dir_of

logger = logging.getLogger("ckpt_index.wandb")

GLOBAL_STEP_KEY = "trainer/global_step"
#: History keys that are bookkeeping, not metrics.
_NOT_METRICS = frozenset({"_step", "_runtime", "_timestamp", "epoch", GLOBAL_STEP_KEY})
_RUN_DIR = re.compile(r"^(?:offline-)?run-(?P<timespec>\d{8}_\d{6})-(?P<id>.+)$")
# The ids wandb generates; a bare directory name is taken for a run id only when it looks like one.
_GENERATED_ID = re.compile(r"^[a-z0-9]{8}$")

_warned: set[str] = set()
# Set after the first fetch that found no credentials or no network: later fetches skip at once.
_online_unavailable: str | None = None
_read_cache: OrderedDict[tuple, WandbRun] = OrderedDict()
_READ_CACHE_SIZE = 16

#: ``files/config.yaml``, ``wandb-summary.json`` and ``wandb-metadata.json`` are a few KB to a
#: few hundred KB; a summary holding large tables may reach a few MB.
MAX_FILE_BYTES = 16 << 20
#: A transaction log grows by a few KB per logged row: an offline log of a long run is tens to a
#: few hundred MB. A larger (or sparse) file is refused by its size before a byte is read.
MAX_LOG_BYTES = 512 << 20
#: One record (a logged row, a config) larger than this is skipped; wandb's own are far smaller,
#: and decoding one costs up to 20 times its size in memory.
MAX_RECORD_BYTES = 4 << 20
#: Records and record items (history values, config and summary updates) read from one log at
#: most; the rest of a log past either is ignored with a warning. They bound the reader's time
#: where the byte cap alone would not: about 7 us per record and 3-5 us per item on a CI core,
#: some 15 s at worst. A real log holds about 20 bytes per item (a logged row of 20 metrics makes
#: some 45 items in 1 KB): one of more than about 60 MB is read only in part.
MAX_LOG_RECORDS = 1_000_000
MAX_LOG_ITEMS = 3_000_000
#: A record with more items (a row of 100,000 metrics) is skipped: its decoding alone would need
#: hundreds of MB.
MAX_RECORD_ITEMS = 100_000
#: Step x metric values kept from one log's history (about 100 bytes each in memory) ...
MAX_HISTORY_VALUES = 2_000_000
#: ... and distinct config or summary keys.
MAX_UPDATE_KEYS = 100_000


def _warn_once(key: str, message: str, *args: Any) -> None:
    if key not in _warned:
        _warned.add(key)
        logger.warning(message, *args)


# --------------------------------------------------------------------------------------------
# Locating a run


@dataclass(frozen=True)
class RunLocation:
    """Where a checkpoint's W&B run is.

    ``run_dir`` is the local run directory, or None when only the id is known (from Lightning's
    layout or a hint). ``how`` says what found it: ``wandb_dir``, ``lightning_layout`` or ``hint``.
    """

    run_id: str
    run_dir: Path | None = None
    project: str | None = None
    entity: str | None = None
    how: str = "wandb_dir"

    @property
    def run_path(self) -> str | None:
        """``entity/project/run_id`` (or ``project/run_id``) for the W&B API; None without a project."""
        return _run_path(self.entity, self.project, self.run_id)


def _run_path(entity: str | None, project: str | None, run_id: str) -> str | None:
    if not project:
        return None
    return "/".join(p for p in (entity, project, run_id) if p)


def _parse_hint(hint: Any) -> tuple[str, str | None, str | None] | None:
    """A run id or run path from hparams/Hydra -> (run_id, project, entity); None if not one."""
    if not is_name(hint):  # hparams may hold anything under "wandb_run_id"
        return None
    parts = [p for p in hint.strip().split("/") if p]
    if not parts or len(parts) > 3 or any(re.search(r"\s", p) for p in parts):
        return None
    run_id = parts[-1]
    project = parts[-2] if len(parts) >= 2 else None
    entity = parts[-3] if len(parts) == 3 else None
    return run_id, project, entity


def _is_dir(path: Path) -> bool:
    # Path.is_dir() raises on EACCES and ELOOP handling differs; a folder we cannot see is no run.
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _wandb_dirs(bases: Iterable[Path]) -> list[Path]:
    found = []
    for base in bases:
        for name in ("wandb", ".wandb"):
            candidate = base / name
            if _is_dir(candidate):
                found.append(candidate)
    return found


def _run_dirs(wandb_dirs: Iterable[Path]) -> dict[Path, tuple[str, float | None]]:
    """Run directories under the given ``wandb/`` dirs -> (run id, start time)."""
    runs: dict[Path, tuple[str, float | None]] = {}
    for wandb_dir in wandb_dirs:
        try:
            entries = list(os.scandir(wandb_dir))
        except OSError:
            continue
        for entry in entries:
            match = _RUN_DIR.match(entry.name)
            if not match or not _is_dir(Path(entry.path)) or not is_name(match["id"]):
                continue
            # latest-run does not match the pattern, but a hand-made symlink to a run might.
            try:
                resolved = Path(entry.path).resolve()
            except (OSError, RuntimeError):  # a symlink loop
                continue
            if resolved in runs:
                continue
            try:
                # wandb names the directory after the local start time.
                started = time.mktime(time.strptime(match["timespec"], "%Y%m%d_%H%M%S"))
            except (ValueError, OverflowError):
                started = None
            runs[resolved] = (match["id"], started)
    return runs


def find_run(
    ckpt_path: str | os.PathLike[str], run_id_hints: Iterable[str] = ()
) -> RunLocation | None:
    """Locate the W&B run that wrote a checkpoint, from the filesystem only.

    Looks for ``wandb/run-*-<id>`` and ``wandb/offline-run-*-<id>`` in the run directory and up to
    two parents (up to two parents of the ``save_dir`` too in Lightning's
    ``<save_dir>/<project>/<run_id>/checkpoints`` layout). With several runs, one whose id is
    known (Lightning's layout, then ``run_id_hints`` in order) wins, else the one that started
    last before the checkpoint was written. Without a run directory, a known id still gives a
    location with ``run_dir=None``.

    Args:
        ckpt_path: the checkpoint file.
        run_id_hints: run ids (or ``entity/project/id`` paths) recorded in hparams or the Hydra
            config.

    Example::

        loc = find_run("outputs/p/abc12345/checkpoints/epoch=1-step=8.ckpt")
        run = read_run(loc) if loc else None
    """
    ckpt = Path(ckpt_path).absolute()
    run_dir = run_dir_of(ckpt)
    bases = [run_dir, *list(run_dir.parents)[:2]]
    wider: list[Path] = []  # searched only for a run whose id is known

    # (id, project, entity, how) in order of preference.
    known: list[tuple[str, str | None, str | None, str]] = []
    if ckpt.parent.name == "checkpoints" and run_dir != run_dir.parent:
        save_dir = run_dir.parent.parent
        wider = [save_dir, *list(save_dir.parents)[:2]]
        known.append((run_dir.name, run_dir.parent.name, None, "lightning_layout"))
    for hint in run_id_hints or ():
        parsed = _parse_hint(hint)
        if parsed:
            known.append((*parsed, "hint"))

    near = _run_dirs(_wandb_dirs(bases))
    if known:
        runs = {**near, **_run_dirs(_wandb_dirs(b for b in dict.fromkeys(wider) if b not in bases))}
        for run_id, project, entity, _how in known:
            matches = sorted(
                (p for p, (rid, _) in runs.items() if rid == run_id), key=lambda p: p.name
            )
            if matches:
                # A resumed run has one directory per session; the newest holds the most history.
                return RunLocation(run_id, matches[-1], project, entity, "wandb_dir")
    if near:
        return _closest_before(near, ckpt)
    for run_id, project, entity, how in known:
        if how == "hint" or _GENERATED_ID.match(run_id):
            return RunLocation(run_id, None, project, entity, how)
    return None


def _closest_before(runs: dict[Path, tuple[str, float | None]], ckpt: Path) -> RunLocation:
    try:
        written = ckpt.stat().st_mtime
    except OSError:
        written = math.inf
    timed = sorted(
        (
            (started, path.name, path, rid)
            for path, (rid, started) in runs.items()
            if started is not None
        ),
    )
    before = [t for t in timed if t[0] <= written]
    if before:
        _, _, path, run_id = before[-1]
    elif timed:
        _, _, path, run_id = timed[0]
    else:
        path, (run_id, _) = sorted(runs.items())[0]
    return RunLocation(run_id, path, how="wandb_dir")


# --------------------------------------------------------------------------------------------
# A run's contents


@dataclass
class WandbRun:
    """What a W&B run says: config, summary, and history indexed by step.

    ``config`` is the plain nested run config (without W&B's ``_wandb``); ``summary`` the final
    summary, for display only (never a checkpoint's metric values). ``source`` is ``files``,
    ``log``, ``files+log``, ``api``, ``cache`` or ``none``; ``warnings`` lists problems met while
    reading (a damaged log, wandb not importable). Treat instances as read-only: :func:`read_run`
    may hand the same history to several callers.
    """

    run_id: str
    project: str | None = None
    entity: str | None = None
    run_dir: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    #: True when the run was logged by Lightning's WandbLogger (its define_metric on trainer/global_step).
    lightning_steps: bool = False
    source: str = "none"
    warnings: list[str] = field(default_factory=list)
    #: logged step (trainer/global_step, else _step) -> merged numeric metrics of its rows.
    history: dict[int, dict[str, float]] = field(default_factory=dict, repr=False)

    @property
    def run_path(self) -> str | None:
        return _run_path(self.entity, self.project, self.run_id)

    @property
    def steps(self) -> list[int]:
        return sorted(self.history)

    def history_at_step(self, step: int) -> dict[str, float]:
        """Numeric metrics of the history rows logged at ``step``, merged (later rows win).

        Rows are matched on ``trainer/global_step``, or on ``_step`` when no row has it.
        Bookkeeping keys (``_step``, ``_runtime``, ``_timestamp``, ``epoch``,
        ``trainer/global_step``) are left out.
        """
        return dict(self.history.get(int(step), {}))

    def checkpoint_metrics(self, global_step: int) -> dict[str, float]:
        """The history metrics that belong to a checkpoint saved at ``global_step``.

        For a run logged by Lightning's WandbLogger these are the rows at ``global_step - 1``
        (Lightning logs the batch and the validation that precede a save under the step count
        from before that batch); otherwise the rows at ``global_step``. Never the summary.
        """
        step = int(global_step) - 1 if self.lightning_steps else int(global_step)
        return self.history_at_step(step)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _step_value(value: Any) -> int | None:
    number = _number(value)
    if number is None or not math.isfinite(number) or not number.is_integer():
        return None
    return int(number)


class _HistoryIndex:
    """Builds the step -> metrics index from history rows as they stream by."""

    def __init__(self) -> None:
        self.by_global_step: dict[int, dict[str, float]] = {}
        self.by_step: dict[int, dict[str, float]] = {}
        #: Each metric name is stored once, however many rows repeat it.
        self._names: dict[str, str] = {}
        self.values = 0
        self.full = False

    def add(self, row: dict[str, Any]) -> None:
        if self.full:
            return
        names = self._names
        metrics = {}
        for key, value in row.items():
            if not isinstance(key, str) or key in _NOT_METRICS or key.startswith("_"):
                continue
            number = _number(value)
            if number is not None:
                metrics[names.setdefault(key, key)] = number
        global_step = _step_value(row.get(GLOBAL_STEP_KEY))
        if global_step is not None:
            index, step = self.by_global_step, global_step
        elif not self.by_global_step:
            index, step = self.by_step, _step_value(row.get("_step"))
            if step is None:
                return
        else:
            return
        target = index.get(step)
        if target is None:
            target = index[step] = {}
            self.values += 1  # a step costs about as much as a value
        before = len(target)
        target.update(metrics)
        self.values += len(target) - before
        if self.values > MAX_HISTORY_VALUES:
            self.full = True

    def result(self) -> dict[int, dict[str, float]]:
        return self.by_global_step if self.by_global_step else self.by_step


def _uses_lightning_steps(metric_defs: Any) -> bool:
    """Whether W&B's stored metric definitions (config ``_wandb.m``) step on trainer/global_step.

    Each definition is a MetricRecord encoded by field number: 1 name, 2 glob name, 4 step
    metric, 5 step metric index (1-based position of the step metric's own definition).
    """
    if not isinstance(metric_defs, list):
        return False
    defs = [{str(k): v for k, v in d.items()} for d in metric_defs if isinstance(d, dict)]
    names = [d.get("1") for d in defs]
    index = names.index(GLOBAL_STEP_KEY) + 1 if GLOBAL_STEP_KEY in names else None
    return any(
        d.get("4") == GLOBAL_STEP_KEY or (index is not None and d.get("5") == index) for d in defs
    )


# --------------------------------------------------------------------------------------------
# Reading local files


def _read_config_yaml(path: Path) -> tuple[dict[str, Any], Any]:
    """``files/config.yaml`` -> (config, the ``_wandb`` value); raises SidecarError or UnsafeFileError."""
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


#: The files :func:`read_run` reads; a change to any of them invalidates its cache.
_RUN_FILES = ("files/config.yaml", "files/wandb-summary.json", "files/wandb-metadata.json")


def _signature(run_dir: Path) -> tuple:
    parts = []
    for path in [*_log_files(run_dir), *(run_dir / name for name in _RUN_FILES)]:
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            continue
        parts.append((path.name, st.st_ino, st.st_size, st.st_mtime_ns))
    return (str(run_dir),) + tuple(parts)


def _clean_name(value: Any) -> str | None:
    return value if is_name(value) else None


def read_run(location: RunLocation) -> WandbRun | None:
    """Read a run from its local files, without network.

    Online runs keep ``files/config.yaml`` and ``files/wandb-summary.json``; offline and online
    runs keep the ``run-<id>.wandb`` transaction log, whose run, config, summary, metric and
    history records are read with wandb's protobuf classes. Without wandb importable the log is
    skipped (one warning) and only ``files/`` is read. None when the location has no local run
    directory (only an id: try :func:`fetch_online`); a directory with nothing readable gives a
    run with ``source == "none"``. Answers are cached per process until the files change.

    Example::

        run = read_run(find_run(ckpt))
        run.config["model"]["architecture"], run.checkpoint_metrics(640)
        # a Lightning-logged run: the rows at trainer/global_step 639, not the summary
    """
    if location.run_dir is None or not _is_dir(location.run_dir):
        return None
    run = WandbRun(location.run_id, run_dir=location.run_dir)
    key = _signature(location.run_dir)
    cached = _read_cache.get(key)
    if cached is not None:
        _read_cache.move_to_end(key)
        return _copy_run(cached, location)

    sources = []
    log = _log_file(location.run_dir, location.run_id)
    file_config: dict[str, Any] = {}
    internal = None
    if log is not None and _read_log(log, run):
        sources.append("log")

    files = location.run_dir / "files"
    config_yaml = files / "config.yaml"
    if os.path.lexists(config_yaml):
        try:
            file_config, internal = _read_config_yaml(config_yaml)
            sources.insert(0, "files")
        except (SidecarError, UnsafeFileError) as exc:
            run.warnings.append(f"{config_yaml}: unreadable ({exc.reason})")
    # The files are the final snapshot of what the log records step by step.
    run.config.update(file_config)
    if isinstance(internal, dict) and _uses_lightning_steps(internal.get("m")):
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
            if "files" not in sources:
                sources.insert(0, "files")
        except UnsafeFileError as exc:
            run.warnings.append(f"{path}: unreadable ({exc.reason})")
        except ValueError as exc:
            run.warnings.append(f"{path}: unreadable ({' '.join(str(exc).split())})")
    run.summary.pop("_wandb", None)
    run.config.pop("_wandb", None)
    # What the run recorded beats what the location guessed from paths.
    run.project = (
        run.project or _clean_name(run.metadata.get("project")) or location.project or None
    )
    run.entity = run.entity or _clean_name(run.metadata.get("entity")) or location.entity or None
    run.source = "+".join(sources) or "none"

    _read_cache[key] = run
    while len(_read_cache) > _READ_CACHE_SIZE:
        _read_cache.popitem(last=False)
    return _copy_run(run, location)


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


# --------------------------------------------------------------------------------------------
# The transaction log: a LevelDB-style log of protobuf Records.
#
# Layout (wandb's datastore, unchanged from the Python SDK to wandb-core): a 7-byte header
# ":W&B", magic 0xBEE1 (uint16 LE), version 0; then 32 KiB blocks counted from the start of the
# file. Each chunk has a 7-byte header: CRC-32 (uint32 LE) of the type byte followed by the data,
# length (uint16 LE), type (1 full, 2 first, 3 middle, 4 last). A block's tail shorter than a
# chunk header is zero padding.

_BLOCK = 32768
_FILE_HEADER = struct.Struct("<4sHB")
_CHUNK_HEADER = struct.Struct("<IHB")
_IDENT, _MAGIC = b":W&B", 0xBEE1
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
_TYPE_CRC = {t: zlib.crc32(bytes([t])) for t in (_FULL, _FIRST, _MIDDLE, _LAST)}
_TRUNCATED = "truncated final record"  # a run still writing, or killed mid-write


def _log_records(path: Path, problems: list[str]) -> Iterator[bytes]:
    """The record payloads of a ``.wandb`` log; damage is noted in ``problems`` and skipped.

    Work is linear in the bytes present: every chunk header advances by at least its own size,
    a chunk's length field is 16 bits, and a record assembled from chunks is dropped once it
    passes :data:`MAX_RECORD_BYTES`.
    """
    try:
        with open_regular(path, MAX_LOG_BYTES) as (f, _):
            yield from _chunked_records(f, problems)
    except UnsafeFileError as exc:
        problems.append(exc.reason)


def _read_full(f: Any, n: int) -> bytes:
    data = f.read(n)
    while data and len(data) < n:  # an unbuffered read may return less than asked
        more = f.read(n - len(data))
        if not more:
            break
        data += more
    return data


def _chunked_records(f: Any, problems: list[str]) -> Iterator[bytes]:
    header = _read_full(f, _FILE_HEADER.size)
    if len(header) < _FILE_HEADER.size:
        problems.append("empty or truncated header")
        return
    ident, magic, version = _FILE_HEADER.unpack(header)
    if ident != _IDENT or magic != _MAGIC:
        problems.append("not a W&B transaction log")
        return
    if version != 0:
        problems.append(f"log format version {version} (read as version 0)")
    block = header + _read_full(f, _BLOCK - _FILE_HEADER.size)
    offset = 0  # of the block in the file
    pos = _FILE_HEADER.size
    pending: bytearray | None = None
    while True:
        while pos + _CHUNK_HEADER.size <= len(block):
            crc, length, kind = _CHUNK_HEADER.unpack_from(block, pos)
            start, end = pos + _CHUNK_HEADER.size, pos + _CHUNK_HEADER.size + length
            if kind == 0 and length == 0:
                break  # zero padding
            if end > len(block):
                if len(block) == _BLOCK:
                    problems.append(f"chunk overruns its block at offset {offset + pos}")
                else:
                    problems.append(_TRUNCATED)
                pending = None
                break
            data = block[start:end]
            pos = end
            if kind not in _TYPE_CRC or zlib.crc32(data, _TYPE_CRC[kind]) != crc:
                problems.append(f"bad checksum at offset {offset + start}")
                pending = None
                break  # resynchronise at the next block
            if kind == _FULL:
                pending = None
                yield data
            elif kind == _FIRST:
                pending = bytearray(data)
            elif pending is not None:
                if len(pending) + len(data) > MAX_RECORD_BYTES:
                    problems.append(
                        f"record over {MAX_RECORD_BYTES:,} bytes skipped at offset {offset + start}"
                    )
                    pending = None  # its remaining chunks are orphans and skipped
                    continue
                pending += data
                if kind == _LAST:
                    yield bytes(pending)
                    pending = None
        offset += len(block)
        block = _read_full(f, _BLOCK)
        pos = 0
        if not block:
            if pending is not None:
                problems.append(_TRUNCATED)
            return


def _record_class():
    try:
        from wandb.proto import wandb_internal_pb2
    except ImportError as exc:  # also: wandb built for another protobuf major
        _warn_once(
            "no-wandb",
            "wandb is not importable (%s): .wandb transaction logs are skipped; only files/ of "
            "online runs are read",
            exc,
        )
        return None
    return wandb_internal_pb2.Record


def _item_path(item: Any) -> tuple[str, ...]:
    return (item.key,) if item.key else tuple(item.nested_key)


def _history_number(item: Any) -> float | None:
    """A history value as a float, or None when it is not a number (text, bool, media)."""
    if item.value_json:
        try:
            return float(item.value_json)  # JSON numbers, NaN and Infinity; "true" or "{..." fail
        except ValueError:
            return None
    try:
        kind = item.WhichOneof("value")  # typed values of newer HistoryItems
    except ValueError:
        return None
    return float(getattr(item, kind)) if kind in ("number", "integer") else None


def _set_path(target: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    # Callers bound len(path) and the value's depth, so the result nests at most MAX_DEPTH levels.
    for key in path[:-1]:
        child = target.get(key)
        if not isinstance(child, dict):
            child = target[key] = {}
        target = child
    target[path[-1]] = value


def _remove_path(target: dict[str, Any], path: tuple[str, ...]) -> None:
    for key in path[:-1]:
        target = target.get(key)
        if not isinstance(target, dict):
            return
    target.pop(path[-1], None)


_REMOVED = object()


class _Updates:
    """Config or summary updates, decoded once per key at the end.

    wandb writes a summary update with every logged row; only the last write of each key matters,
    so the JSON is kept undecoded until then. Re-inserting a key on each write keeps the order of
    last writes, which settles a key set both as a whole and by nested key.
    """

    def __init__(self) -> None:
        self.last: dict[tuple[str, ...], Any] = {}
        self.dropped = 0

    def _put(self, path: tuple[str, ...], value: Any) -> None:
        last = self.last
        if last.pop(path, None) is None and len(last) >= MAX_UPDATE_KEYS:
            self.dropped += 1
            return
        last[path] = value

    def add(self, record: Any) -> None:
        put = self._put
        for item in record.update:  # hot: one summary record per logged row
            key = item.key
            put((key,) if key else tuple(item.nested_key), item.value_json)
        for item in record.remove:
            put(_item_path(item), _REMOVED)

    def apply(self, target: dict[str, Any], problems: list[str], what: str) -> None:
        if self.dropped:
            problems.append(
                f"{what}: {self.dropped:,} update(s) past {MAX_UPDATE_KEYS:,} keys ignored"
            )
        for path, value_json in self.last.items():
            if not path:
                continue
            if len(path) > MAX_DEPTH // 2:
                problems.append(f"{what} key nested {len(path)} levels ignored")
                continue
            if value_json is _REMOVED:
                _remove_path(target, path)
                continue
            try:
                value = plain_data(json.loads(value_json), max_depth=MAX_DEPTH - len(path))
            except RecursionError:
                problems.append(f"undecodable value for {'.'.join(path)}: nested too deep")
                continue
            except ValueError as exc:
                problems.append(f"undecodable value for {'.'.join(path)}: {exc}")
                continue
            _set_path(target, path, value)


def _read_log(path: Path, run: WandbRun) -> bool:
    """Fill ``run`` from a transaction log; False when the log could not be read at all."""
    Record = _record_class()
    if Record is None:
        run.warnings.append(f"{path.name}: skipped, wandb is not importable")
        return False
    from google.protobuf.message import DecodeError

    problems: list[str] = []
    history = _HistoryIndex()
    config, summary = _Updates(), _Updates()
    count = items = 0
    records = _log_records(path, problems)
    try:
        for payload in records:
            if count >= MAX_LOG_RECORDS or items >= MAX_LOG_ITEMS:
                problems.append(
                    f"stopped after {count:,} records and {items:,} items (the reader's limits)"
                )
                break
            record = Record()
            try:
                record.ParseFromString(payload)
            except DecodeError as exc:
                problems.append(f"undecodable record: {exc}")
                continue
            except (RecursionError, ValueError, TypeError) as exc:  # not known to happen; cheap
                problems.append(f"undecodable record: {type(exc).__name__}")
                continue
            count += 1
            kind = record.WhichOneof("record_type")
            if kind == "history":
                # W&B shows a nested logged dict as dotted keys ("a.b") in the history.
                hitems = record.history.item
                items += len(hitems)
                if len(hitems) > MAX_RECORD_ITEMS:
                    problems.append(f"history row of {len(hitems):,} items skipped")
                    continue
                history.add({i.key or ".".join(i.nested_key): _history_number(i) for i in hitems})
            elif kind == "summary":
                items += len(record.summary.update) + len(record.summary.remove)
                summary.add(record.summary)
            elif kind == "config":
                items += len(record.config.update) + len(record.config.remove)
                config.add(record.config)
            elif kind == "metric":
                if record.metric.step_metric == GLOBAL_STEP_KEY:
                    run.lightning_steps = True
            elif kind == "run":
                r = record.run
                items += len(r.config.update) + len(r.summary.update)
                run.run_id = _clean_name(r.run_id) or run.run_id
                run.project = _clean_name(r.project) or run.project
                run.entity = _clean_name(r.entity) or run.entity
                config.add(r.config)
                summary.add(r.summary)
    except OSError as exc:
        problems.append(str(exc))
    finally:
        records.close()
    config.apply(run.config, problems, "config")
    summary.apply(run.summary, problems, "summary")
    if history.full:
        problems.append(f"history past {MAX_HISTORY_VALUES:,} values: later rows ignored")
    run.history = history.result()
    for problem in problems[:5]:
        run.warnings.append(f"{path.name}: {problem}")
    damage = [p for p in problems if p != _TRUNCATED]  # a live run's log ends mid-record
    if damage:
        logger.warning("%s: %d problem(s) reading the log, first: %s", path, len(damage), damage[0])
    return count > 0


# --------------------------------------------------------------------------------------------
# Model fields from a run config

_FIELD_PATHS: dict[str, tuple[str, ...]] = {
    "architecture": (
        "model.architecture",
        "model.architecture_name",
        "architecture",
        "architecture_name",
    ),
    "encoder": (
        "model.component_overrides.encoder.model_name",
        "model.encoder.model_name",
        "encoder.model_name",
        "model.encoder",
        "encoder",
    ),
    "exp_name": ("exp_name",),
}
for _part in ("decoder", "head", "loss"):
    _FIELD_PATHS[_part] = (
        f"model.component_overrides.{_part}.name",
        f"model.{_part}.name",
        f"{_part}.name",
        f"model.{_part}",
        _part,
    )


def _lookup(config: Any, parts: list[str]) -> Any:
    """Nested lookup that also accepts flattened keys (``model.architecture``, ``model/architecture``)."""
    if not parts:
        return config
    if not isinstance(config, dict):
        return None
    for i in range(len(parts), 0, -1):
        for sep in (".", "/"):
            key = sep.join(parts[:i])
            if key in config:
                found = _lookup(config[key], parts[i:])
                if found is not None:
                    return found
    return None


def model_fields_from_config(config: dict[str, Any]) -> dict[str, str]:
    """Model and experiment names a W&B run config gives, for the caller to merge.

    Keys (only those found): ``architecture``, ``encoder``, ``decoder``, ``head``, ``loss``,
    ``exp_name``. Unresolved interpolations (``${...}``) are not names and are skipped.

    Example::

        model_fields_from_config({"model": {"architecture": "dbnet"}, "exp_name": "x"})
        # {"architecture": "dbnet", "exp_name": "x"}
    """
    fields: dict[str, str] = {}
    for name, paths in _FIELD_PATHS.items():
        for path in paths:
            value = _lookup(config, path.split("."))
            if is_name(value) and value.strip() and "${" not in value:
                fields[name] = value.strip()
                break
    return fields


# --------------------------------------------------------------------------------------------
# The W&B API, cached in the index

#: A cached failure (run not found, no access) is retried after this long.
RETRY_FAILED_AFTER_S = 24 * 3600
#: A cached answer that ends before the step asked for (the run was still going) is refetched,
#: at most this often.
REFRESH_AFTER_S = 600


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        path = os.environ.get("NETRC") or None
        return host is not None and netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _cache_table():
    from ckpt_index.index.models import WandbRunCache

    return WandbRunCache.__table__


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _load_cache(engine: Any, run_path: str) -> Any:
    from sqlalchemy import select

    table = _cache_table()
    with engine.connect() as conn:
        return conn.execute(select(table).where(table.c.run_path == run_path)).first()


def _store_cache(
    engine: Any, run_path: str, run: WandbRun | None, error: str | None, raw_config: Any = None
) -> None:
    from sqlalchemy import delete, insert
    from sqlalchemy.exc import SQLAlchemyError

    from ckpt_index.index.engine import write_transaction

    table = _cache_table()
    values = {
        "run_path": run_path,
        "fetched_at": _now().isoformat(),
        "ok": run is not None,
        "error": error,
    }
    if run is not None:
        values.update(
            config_json=json.dumps(
                raw_config if raw_config is not None else run.config, default=str
            ),
            summary_json=json.dumps(run.summary, default=str),
            history_json=json.dumps({str(k): v for k, v in run.history.items()}),
        )
    try:
        with write_transaction(engine) as conn:
            conn.execute(delete(table).where(table.c.run_path == run_path))
            conn.execute(insert(table).values(**values))
    except SQLAlchemyError as exc:  # a read-only index still answers; it just does not remember
        logger.debug("could not cache the W&B answer for %s: %s", run_path, exc)


def _run_from_api_data(
    run_path: str, raw_config: dict, summary: dict, history: dict, source: str
) -> WandbRun:
    parts = run_path.split("/")
    internal = raw_config.get("_wandb") if isinstance(raw_config, dict) else None
    config = {k: v for k, v in (raw_config or {}).items() if k != "_wandb"}
    return WandbRun(
        parts[-1],
        parts[-2] if len(parts) >= 2 else None,
        parts[-3] if len(parts) >= 3 else None,
        None,
        config,
        {k: v for k, v in (summary or {}).items() if k != "_wandb"},
        {},
        isinstance(internal, dict) and _uses_lightning_steps(internal.get("m")),
        source,
        [],
        history,
    )


def _from_cache(row: Any, run_path: str) -> WandbRun | None:
    try:
        history = {int(k): v for k, v in json.loads(row.history_json or "{}").items()}
        config, summary = json.loads(row.config_json or "{}"), json.loads(row.summary_json or "{}")
        return _run_from_api_data(run_path, config, summary, history, "cache")
    except (ValueError, TypeError, AttributeError, RecursionError) as exc:
        logger.debug("ignoring a damaged cache row for %s: %s", run_path, exc)
        return None


def _age_s(row: Any) -> float:
    try:
        return (_now() - datetime.fromisoformat(row.fetched_at)).total_seconds()
    except (TypeError, ValueError):
        return math.inf


class _Fetch:
    """State shared with the fetching thread; ``progress`` is the monotonic time of its last step."""

    def __init__(self) -> None:
        self.progress = time.monotonic()
        self.result: tuple[dict, dict, dict[int, dict[str, float]]] | None = None
        self.error: BaseException | None = None


def _fetch_remote(run_path: str, timeout: float, state: _Fetch) -> None:
    try:
        import wandb

        api = wandb.Api(timeout=timeout)
        state.progress = time.monotonic()
        remote = api.run(run_path)
        raw_config = dict(remote.rawconfig or remote.config or {})
        summary = dict(remote.summary_metrics or {})
        state.progress = time.monotonic()
        history = _HistoryIndex()
        for i, row in enumerate(remote.scan_history()):
            history.add(row)
            if i % 100 == 0:
                state.progress = time.monotonic()
        state.result = (raw_config, summary, history.result())
    except BaseException as exc:  # handed to the caller's thread
        state.error = exc


def _is_network_error(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return any(
        s in text
        for s in (
            "connection",
            "timed out",
            "timeout",
            "name or service",
            "name resolution",
            "failed to resolve",
            "unreachable",
            "authentication",
            "credentials",
            "api key",
            "did not respond",
            "max retries",
        )
    )


def fetch_online(
    run_path: str,
    *,
    timeout: float = 10.0,
    engine: Any = None,
    global_step: int | None = None,
) -> WandbRun | None:
    """Config, summary and history of a run from the W&B API (``--wandb-online``), or None.

    The answer (or a run-specific failure such as "not found") is cached in the index's
    ``wandb_run_cache`` when ``engine`` is given and served from there afterwards; a cached
    failure is retried after a day, and a cached answer whose history ends before
    ``global_step`` (the run was still going) is refetched at most every ten minutes.

    Without an API key (``WANDB_API_KEY`` or netrc) or without network this returns None with
    one warning per process, and later calls skip the network at once. The fetch runs in a daemon
    thread: it is abandoned when it makes no progress for ``timeout`` seconds.

    Example::

        run = fetch_online("team/ocr/abc12345", engine=open_engine(), global_step=640)
    """
    global _online_unavailable
    if not run_path:
        return None
    row = _load_cache(engine, run_path) if engine is not None else None
    stale: WandbRun | None = (
        None  # a cached answer worth refreshing, and the fallback if that fails
    )
    if row is not None:
        cached = _from_cache(row, run_path) if row.ok else None
        if cached is not None:
            needed = None if global_step is None else int(global_step) - int(cached.lightning_steps)
            ends_early = needed is not None and max(cached.history, default=-1) < needed
            if not ends_early or _age_s(row) < REFRESH_AFTER_S:
                return cached
            stale = cached
        elif not row.ok and _age_s(row) < RETRY_FAILED_AFTER_S:
            return None

    if _online_unavailable is None and not _has_api_key():
        _online_unavailable = "no W&B API key (set WANDB_API_KEY or run `wandb login`)"
    if _online_unavailable is not None:
        _warn_once("online", "W&B online look-ups skipped: %s", _online_unavailable)
        return stale

    state = _Fetch()
    worker = threading.Thread(
        target=_fetch_remote,
        args=(run_path, timeout, state),
        name="ckpt-index-wandb-fetch",
        daemon=True,
    )
    worker.start()
    while worker.is_alive() and time.monotonic() - state.progress < timeout:
        worker.join(min(0.05, timeout))
    if worker.is_alive():
        _online_unavailable = f"no answer from the W&B API within {timeout:g} s"
        _warn_once("online", "W&B online look-ups skipped: %s", _online_unavailable)
        return stale
    if state.error is not None:
        message = f"{type(state.error).__name__}: {state.error}"
        if _is_network_error(state.error):
            _online_unavailable = message
            _warn_once("online", "W&B online look-ups skipped: %s", message)
            return stale
        logger.warning("W&B run %s: %s", run_path, message)
        if engine is not None and stale is None:
            _store_cache(engine, run_path, None, message)
        return stale

    raw_config, summary, history = state.result
    run = _run_from_api_data(run_path, raw_config, summary, history, "api")
    if engine is not None:
        _store_cache(engine, run_path, run, None, raw_config)
    return run
