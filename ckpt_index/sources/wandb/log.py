"""The ``run-<id>.wandb`` transaction log of a W&B run, read without wandb's reader.

Offline and online runs both keep this log: a LevelDB-style log of protobuf ``Record`` messages,
decoded with wandb's own protobuf classes (wandb is imported only inside :func:`read_log`, so
importing this module stays cheap; without wandb the log is skipped with one warning).

The log is untrusted. It is opened without blocking through :mod:`ckpt_index.safe_io` (a FIFO
named ``run-x.wandb`` is refused at once), refused by size past :data:`MAX_LOG_BYTES` before a
byte is read, and read with bounded records (:data:`MAX_RECORD_BYTES`, :data:`MAX_LOG_RECORDS`,
:data:`MAX_LOG_ITEMS`, :data:`MAX_RECORD_ITEMS`) and bounded stored values
(:data:`~ckpt_index.sources.wandb.run.MAX_HISTORY_VALUES`, :data:`MAX_UPDATE_KEYS`). Values come
back as plain JSON-able data no deeper than :data:`~ckpt_index.sidecar.files.MAX_DEPTH` levels;
damage becomes warnings of the run, never an exception.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

from ckpt_index.safe_io import UnsafeFileError, open_regular
from ckpt_index.sidecar.files import MAX_DEPTH
from ckpt_index.sources.hydra import plain_data
from ckpt_index.sources.wandb.run import (
    GLOBAL_STEP_KEY,
    HistoryIndex,
    WandbRun,
    clean_name,
    logger,
    warn_once,
)

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
#: Distinct config or summary keys kept from one log.
MAX_UPDATE_KEYS = 100_000

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


def _log_records(path: Path, problems: list[str]) -> Generator[bytes, None, None]:
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
        else:
            # The last block, cut 1-6 bytes into a chunk header (zeros are padding).
            if len(block) < _BLOCK and any(block[pos:]):
                problems.append(_TRUNCATED)
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
        warn_once(
            "no-wandb",
            "wandb is not importable (%s): .wandb transaction logs are skipped; only files/ of "
            "online runs are read",
            exc,
        )
        return None
    return wandb_internal_pb2.Record  # type: ignore[attr-defined]  # generated, no stubs


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
    node: Any = target
    for key in path[:-1]:
        node = node.get(key)
        if not isinstance(node, dict):
            return
    node.pop(path[-1], None)


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


class _LogReader:
    """Records of one log applied to a run: history rows, config and summary updates, the
    run's own names and whether it steps on ``trainer/global_step``."""

    def __init__(self, run: WandbRun, record_class: Any) -> None:
        # Importable whenever wandb's Record is; mypy has no protobuf stubs here.
        from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

        self.run = run
        self.record_class = record_class
        self.decode_error = DecodeError
        self.problems: list[str] = []
        self.history = HistoryIndex()
        self.config, self.summary = _Updates(), _Updates()
        self.count = self.items = 0

    def read(self, payloads: Iterator[bytes]) -> None:
        for payload in payloads:
            if self.count >= MAX_LOG_RECORDS or self.items >= MAX_LOG_ITEMS:
                self.problems.append(
                    f"stopped after {self.count:,} records and {self.items:,} items "
                    "(the reader's limits)"
                )
                break
            record = self._parse(payload)
            if record is not None:
                self.count += 1
                self._apply(record)

    def _parse(self, payload: bytes) -> Any:
        record = self.record_class()
        try:
            record.ParseFromString(payload)
        except self.decode_error as exc:
            self.problems.append(f"undecodable record: {exc}")
            return None
        except (RecursionError, ValueError, TypeError) as exc:  # not known to happen; cheap
            self.problems.append(f"undecodable record: {type(exc).__name__}")
            return None
        return record

    def _apply(self, record: Any) -> None:
        kind = record.WhichOneof("record_type")
        if kind == "history":
            self._add_row(record.history.item)
        elif kind in ("summary", "config"):
            updates = getattr(record, kind)
            self.items += len(updates.update) + len(updates.remove)
            (self.summary if kind == "summary" else self.config).add(updates)
        elif kind == "metric":
            if record.metric.step_metric == GLOBAL_STEP_KEY:
                self.run.lightning_steps = True
        elif kind == "run":
            self._add_run(record.run)

    def _add_row(self, items: Any) -> None:
        self.items += len(items)
        if len(items) > MAX_RECORD_ITEMS:
            self.problems.append(f"history row of {len(items):,} items skipped")
            return
        # W&B shows a nested logged dict as dotted keys ("a.b") in the history.
        self.history.add({i.key or ".".join(i.nested_key): _history_number(i) for i in items})

    def _add_run(self, r: Any) -> None:
        run = self.run
        self.items += len(r.config.update) + len(r.summary.update)
        run.run_id = clean_name(r.run_id) or run.run_id
        run.project = clean_name(r.project) or run.project
        run.entity = clean_name(r.entity) or run.entity
        self.config.add(r.config)
        self.summary.add(r.summary)

    def finish(self, path: Path) -> None:
        """Decode the last config and summary values into the run; report the problems met."""
        run, problems = self.run, self.problems
        self.config.apply(run.config, problems, "config")
        self.summary.apply(run.summary, problems, "summary")
        if self.history.full:
            problems.append(f"history past {self.history.limit:,} values: later rows ignored")
        run.history = self.history.result()
        for problem in problems[:5]:
            run.warnings.append(f"{path.name}: {problem}")
        damage = [p for p in problems if p != _TRUNCATED]  # a live run's log ends mid-record
        if damage:
            logger.warning(
                "%s: %d problem(s) reading the log, first: %s", path, len(damage), damage[0]
            )


def read_log(path: Path, run: WandbRun) -> bool:
    """Fill ``run`` from a transaction log; False when the log could not be read at all.

    Never raises for any file content: damage is skipped and listed in ``run.warnings`` (the
    first five problems), and logged once per log unless the only problem is a truncated final
    record (a run still writing).
    """
    record_class = _record_class()
    if record_class is None:
        run.warnings.append(f"{path.name}: skipped, wandb is not importable")
        return False
    reader = _LogReader(run, record_class)
    payloads = _log_records(path, reader.problems)
    try:
        reader.read(payloads)
    except OSError as exc:
        reader.problems.append(str(exc))
    finally:
        payloads.close()
    reader.finish(path)
    return reader.count > 0
