"""Read a Lightning ``.ckpt`` without running code from it and without reading its tensors (SPEC §8).

A checkpoint written by ``torch.save`` (torch >= 1.6) is a zip archive: ``<prefix>/data.pkl``, the
pickled checkpoint dict, beside one member per tensor storage. Only the pickle is read (plus
``<prefix>/byteorder``), with :class:`~ckpt_index._unpickle.SafeUnpickler`: every global it names
becomes an inert placeholder (the module is never imported) and tensors become
:class:`TensorDescriptor` objects (dtype, shape). The few bytes of 0-d tensors outside the state
dict and optimizer states, such as ModelCheckpoint's ``best_model_score``, are decoded so scores
come out as numbers. What is read does not grow with the size of the weights.

The pre-1.6 format (pickles followed by raw storages) is read the same way. Anything else, and every
truncated or corrupt file, raises :class:`CheckpointReadError` with a one-line reason.

Example::

    contents = read_checkpoint("outputs/run/checkpoints/best.ckpt")
    contents.epoch, contents.hyper_parameters["encoder"], contents.checkpoint_callbacks[0]["monitor"]
"""

from __future__ import annotations

import ast
import errno
import io
import os
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from ckpt_index._unpickle import (
    ELEMENT_SIZE,
    ConversionLimit,
    Placeholder,
    SafeUnpickler,
    StorageRef,
    TensorDescriptor,
    decode_scalar,
    global_name,
    scan_pickle,
    to_plain,
)

__all__ = [
    "CheckpointContents",
    "CheckpointReadError",
    "Placeholder",
    "StorageRef",
    "TensorDescriptor",
    "read_checkpoint",
    "to_plain",
]

#: A Lightning checkpoint's pickle is kilobytes to a few megabytes; refuse to read more than this.
MAX_PICKLE_BYTES = 256 << 20
#: No single read is larger (the zip directory of a checkpoint with 100k tensors is ~10 MiB).
MAX_READ_BYTES = 64 << 20
#: Tensor storages up to this size are read whole to decode a 0-d tensor in them.
MAX_SCALAR_STORAGE_BYTES = 64
#: 0-d tensors decoded per checkpoint at most (each is one or two small reads).
MAX_SCALAR_READS = 1024
#: Top-level keys whose 0-d tensors (BatchNorm counters, optimizer steps) are left undecoded.
_WEIGHT_KEYS = frozenset({"state_dict", "optimizer_states", "lr_schedulers"})

#: What a format loader returns: the top-level dict, a reader of scalar bytes, the format name.
_Loaded = tuple[dict[Any, Any], "_ScalarSource | None", str]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # zipfile's structFileHeader
_STATE_KEY = re.compile(r"^(?P<cls>[A-Za-z_][\w.]*)(?P<kwargs>\{.*\})$", re.DOTALL)
_MODE_IN_KEY = re.compile(r"""['"]mode['"]\s*:\s*['"](min|max)['"]""")


class CheckpointReadError(Exception):
    """A checkpoint that cannot be read; ``reason`` is one line."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = " ".join(str(reason).split())
        super().__init__(f"{self.path}: {self.reason}")


@dataclass
class CheckpointContents:
    """What :func:`read_checkpoint` found in a checkpoint.

    ``raw`` is the unpickled top-level dict (placeholders and tensor descriptors included); the
    other fields are plain Python taken from it. ``checkpoint_callbacks`` has one dict per
    ModelCheckpoint state: ``state_key``, ``monitor``, ``mode``, ``current_score`` (the monitored
    value when this file was saved), ``best_model_score``, ``best_model_path``, ``best_k_models``
    (path -> score), ``kth_best_model_path``, ``last_model_path``, ``dirpath`` and ``config`` (the
    arguments in the state key, when they parse).
    """

    path: Path
    raw: dict[Any, Any] = field(repr=False)
    bytes_read: int
    format: str  # "zip" or "legacy"
    epoch: int | None = None
    global_step: int | None = None
    lightning_version: str | None = None
    hyper_parameters: dict[Any, Any] | None = None
    cleval_metrics: dict[str, float] | None = None
    checkpoint_callbacks: list[dict[str, Any]] = field(default_factory=list)
    #: Parts of the checkpoint that could not be converted (too deep, too large), one line each.
    warnings: list[str] = field(default_factory=list)

    @cached_property
    def state_dict_shapes(self) -> dict[str, tuple[int, ...]]:
        """Parameter and buffer name -> shape, from ``state_dict`` (or a bare saved state dict)."""
        state = self.raw.get("state_dict")
        if not isinstance(state, dict):
            bare = bool(self.raw) and all(isinstance(v, TensorDescriptor) for v in self.raw.values())
            state = self.raw if bare else {}
        return {str(k): v.shape for k, v in state.items() if isinstance(v, TensorDescriptor)}


def read_checkpoint(path: str | os.PathLike[str]) -> CheckpointContents:
    """Read the metadata of the checkpoint at ``path`` safely; see the module docstring.

    Raises:
        CheckpointReadError: the file is missing, empty, truncated, not a torch checkpoint, or its
            pickle is malformed.
    """
    path = Path(path)
    try:
        file = _CountingFile(path)
    except OSError as exc:
        raise CheckpointReadError(path, f"cannot open: {exc.strerror or exc}") from None
    with file:
        try:
            raw, scalars, fmt = _load(file, path)
            try:
                _decode_scalars(raw, scalars)
            finally:
                if scalars is not None:
                    scalars.close()
        except _TooLarge as exc:
            raise CheckpointReadError(path, str(exc)) from None
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # a seek to a negative offset read from a damaged header
                raise CheckpointReadError(path, "corrupt file: an offset in it points outside it") from None
            raise CheckpointReadError(path, f"read error: {exc.strerror or exc}") from None
        contents = CheckpointContents(path=path, raw=raw, bytes_read=0, format=fmt)
        _summarize(contents)
        contents.bytes_read = file.bytes_read
    return contents


# ---------------------------------------------------------------------------------------------
# Files


class _TooLarge(Exception):
    pass


class _CountingFile(io.FileIO):
    """Unbuffered, so ``bytes_read`` is what really came from the file; refuses huge single reads."""

    bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0 or size > MAX_READ_BYTES:
            remaining = max(0, os.fstat(self.fileno()).st_size - self.tell())
            size = remaining if size is None or size < 0 else min(size, remaining)
            if size > MAX_READ_BYTES:
                raise _TooLarge(f"refusing to read {size} bytes at once (a zip directory this large is corrupt)")
        data = super().read(size)
        self.bytes_read += len(data)
        return data


def _load(file: _CountingFile, path: Path) -> _Loaded:
    size = os.fstat(file.fileno()).st_size
    if size == 0:
        raise CheckpointReadError(path, "empty file")
    head = file.read(512)
    file.seek(0)
    if head.startswith(b"PK"):
        return _load_zip(file, path)
    if head[257:262] == b"ustar":
        raise CheckpointReadError(
            path, "unsupported legacy format: a tar archive (torch.save before PyTorch 0.4)")
    if _is_legacy(head):
        return _load_legacy(file, path, size)
    try:  # a zip with leading bytes still has its directory at the end
        return _load_zip(file, path)
    except CheckpointReadError:
        pass
    raise CheckpointReadError(
        path, "not a PyTorch checkpoint: neither a zip archive nor the legacy torch format")


def _unpickle(data: bytes, path: Path, what: str, start: int = 0) -> tuple[Any, SafeUnpickler, int]:
    """The object pickled at ``data[start:]``, the unpickler (for its storages) and where it ends."""
    try:
        end = scan_pickle(data, start)
        stream = io.BytesIO(data)
        stream.seek(start)
        unpickler = SafeUnpickler(stream)
        return unpickler.load(), unpickler, end
    except Exception as exc:  # the C unpickler raises many types on malformed input
        raise CheckpointReadError(path, f"{what} is not a valid pickle: {_describe(exc)}") from None


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _top_level(obj: Any, path: Path, what: str) -> dict[Any, Any]:
    if not isinstance(obj, dict):
        kind = global_name(obj) or type(obj).__name__
        raise CheckpointReadError(path, f"{what} holds a {kind}, not a checkpoint dict")
    return obj


# ---------------------------------------------------------------------------------------------
# The zip format (torch >= 1.6)


def _load_zip(file: _CountingFile, path: Path) -> _Loaded:
    try:
        archive = zipfile.ZipFile(file)
    except _ZIP_ERRORS as exc:  # names that are not UTF-8 raise ValueError, odd versions NotImplementedError
        raise CheckpointReadError(path, f"truncated or corrupt zip archive: {_describe(exc)}") from None
    try:
        raw, prefix, byteorder = _read_zip_pickle(archive, path)
    except BaseException:
        archive.close()
        raise
    return raw, _ZipScalars(archive, file, prefix, byteorder), "zip"


def _read_zip_pickle(archive: zipfile.ZipFile, path: Path) -> tuple[dict[Any, Any], str, str]:
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if not pickles:
        raise CheckpointReadError(path, "zip archive has no <prefix>/data.pkl: not a torch.save checkpoint")
    if len(pickles) > 1:
        names = ", ".join(sorted(pickles))
        raise CheckpointReadError(path, f"zip archive has several data.pkl members: {names}")
    name = pickles[0]
    prefix = name[: -len("/data.pkl")]
    data = _read_member(archive, name, MAX_PICKLE_BYTES, path)
    byteorder = "little"
    if f"{prefix}/byteorder" in archive.NameToInfo:
        order = _read_member(archive, f"{prefix}/byteorder", 16, path).strip()
        if order not in (b"little", b"big"):
            raise CheckpointReadError(path, f"{prefix}/byteorder is {order[:16]!r}, not little or big")
        byteorder = order.decode()
    obj, _, _ = _unpickle(data, path, name)
    return _top_level(obj, path, name), prefix, byteorder


#: What zipfile raises on damaged archives and members (zlib.error included).
_ZIP_ERRORS = (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError, RuntimeError, OverflowError,
               struct.error, zlib.error)


def _read_member(archive: zipfile.ZipFile, name: str, limit: int, path: Path) -> bytes:
    info = archive.getinfo(name)
    if info.file_size > limit or info.compress_size > limit:
        raise CheckpointReadError(path, f"{name} is {info.file_size} bytes, more than the {limit} byte limit")
    try:
        with archive.open(info) as member:  # in chunks: each read of the file stays small
            chunks = list(iter(lambda: member.read(16 << 20), b""))
        data = b"".join(chunks)
    except (NotImplementedError, RuntimeError) as exc:  # unknown compression, encryption
        raise CheckpointReadError(path, f"cannot read zip member {name}: {_describe(exc)}") from None
    except _ZIP_ERRORS as exc:
        raise CheckpointReadError(path, f"corrupt zip member {name}: {_describe(exc)}") from None
    if len(data) != info.file_size:
        raise CheckpointReadError(path, f"zip member {name} is truncated")
    return data


class _ScalarSource:
    """Reads the bytes of single tensor elements."""

    byteorder = "little"

    def element(self, ref: StorageRef, start: int, size: int) -> bytes | None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _ZipScalars(_ScalarSource):
    def __init__(self, archive: zipfile.ZipFile, file: _CountingFile, prefix: str, byteorder: str) -> None:
        self.archive, self.file, self.prefix, self.byteorder = archive, file, prefix, byteorder
        self.small: dict[str, bytes] = {}

    def close(self) -> None:
        self.archive.close()

    def element(self, ref: StorageRef, start: int, size: int) -> bytes | None:
        info = self.archive.NameToInfo.get(f"{self.prefix}/data/{ref.key}")
        if info is None or start < 0 or start + size > info.file_size:
            return None
        if info.file_size <= MAX_SCALAR_STORAGE_BYTES:
            if ref.key not in self.small:
                with self.archive.open(info) as member:
                    self.small[ref.key] = member.read(MAX_SCALAR_STORAGE_BYTES + 1)
            return self.small[ref.key][start:start + size]
        if info.compress_type != zipfile.ZIP_STORED:
            return None
        # One element of a large storage (a view such as metrics[3]): seek to it, read only it.
        self.file.seek(info.header_offset)
        header = self.file.read(_LOCAL_HEADER.size)
        if len(header) != _LOCAL_HEADER.size:
            return None
        fields = _LOCAL_HEADER.unpack(header)
        if fields[0] != zipfile.stringFileHeader:
            return None
        self.file.seek(info.header_offset + _LOCAL_HEADER.size + fields[10] + fields[11] + start)
        return self.file.read(size)


# ---------------------------------------------------------------------------------------------
# The legacy format (torch < 1.6): magic, protocol, sys_info, the object, storage keys, storages


def _is_legacy(head: bytes) -> bool:
    try:
        scan_pickle(head)
        return SafeUnpickler(io.BytesIO(head)).load() == _LEGACY_MAGIC
    except Exception:
        return False


class _NeedMore(Exception):
    pass


def _load_legacy(file: _CountingFile, path: Path, size: int) -> _Loaded:
    # The pickles are followed by the raw storages, and nothing records where they end: read a
    # growing prefix of the file until they parse.
    buffer = b""
    want = min(1 << 16, MAX_PICKLE_BYTES)
    while True:
        while len(buffer) < min(want, size):
            chunk = file.read(min(16 << 20, min(want, size) - len(buffer)))
            if not chunk:  # shorter than fstat said: it is being written or truncated
                size = len(buffer)
                break
            buffer += chunk
        try:
            return _parse_legacy(buffer, file, path)
        except _NeedMore:
            if len(buffer) >= size:
                reason = "truncated legacy torch file: its pickles end early"
                raise CheckpointReadError(path, reason) from None
            if want >= MAX_PICKLE_BYTES:
                reason = f"legacy torch pickle larger than {MAX_PICKLE_BYTES} bytes"
                raise CheckpointReadError(path, reason) from None
            want = min(want * 4, MAX_PICKLE_BYTES)


def _parse_legacy(buffer: bytes, file: _CountingFile, path: Path) -> _Loaded:
    position = 0

    def load(what: str) -> tuple[Any, SafeUnpickler]:
        nonlocal position
        try:
            obj, unpickler, position = _unpickle(buffer, path, what, position)
        except CheckpointReadError as exc:
            if "truncated" in exc.reason:  # cut off by the end of the buffer: read more
                raise _NeedMore from None
            raise
        return obj, unpickler

    load("legacy magic number")
    version, _ = load("legacy protocol version")
    if version != _LEGACY_PROTOCOL:
        raise CheckpointReadError(path, f"unsupported legacy torch format: protocol version {version!r}")
    sys_info, _ = load("legacy sys_info")
    obj, unpickler = load("legacy checkpoint pickle")
    keys, _ = load("legacy storage keys")
    raw = _top_level(obj, path, "the legacy checkpoint pickle")
    little = not isinstance(sys_info, dict) or sys_info.get("little_endian", True)
    scalars = None
    if isinstance(keys, list) and all(isinstance(k, str) for k in keys):
        scalars = _LegacyScalars(file, position, keys, unpickler.storages, "little" if little else "big")
        size = os.fstat(file.fileno()).st_size
        if scalars.end is not None and scalars.end > size:
            reason = f"truncated legacy torch file: its storages end at byte {scalars.end}, the file has {size}"
            raise CheckpointReadError(path, reason)
    return raw, scalars, "legacy"


class _LegacyScalars(_ScalarSource):
    def __init__(self, file: _CountingFile, start: int, keys: list[str], storages: dict[str, StorageRef],
                 byteorder: str) -> None:
        self.file, self.byteorder = file, byteorder
        # Each storage is an 8-byte element count followed by its bytes, in the order of ``keys``.
        self.offsets: dict[str, tuple[int, int]] = {}
        #: Where the last storage ends, when every storage's size is known.
        self.end: int | None = None
        position = start
        for key in keys:
            ref = storages.get(key)
            if ref is None or ref.dtype not in ELEMENT_SIZE:
                return  # cannot know where later storages start
            self.offsets[key] = (position, ref.numel)
            position += 8 + ref.nbytes
        self.end = position

    def element(self, ref: StorageRef, start: int, size: int) -> bytes | None:
        if ref.key not in self.offsets:
            return None
        position, numel = self.offsets[ref.key]
        if start < 0 or start + size > numel * ELEMENT_SIZE[ref.dtype]:
            return None
        self.file.seek(position)
        header = self.file.read(8)
        if len(header) != 8 or int.from_bytes(header, self.byteorder) != numel:
            return None
        self.file.seek(position + 8 + start)
        return self.file.read(size)


# ---------------------------------------------------------------------------------------------
# Scalars and the convenience fields


def _decode_scalars(raw: dict[Any, Any], source: _ScalarSource | None) -> None:
    """Fill ``value`` of the 0-d tensors reachable outside the weights (bounded work)."""
    if source is None:
        return
    reads, budget = MAX_SCALAR_READS, 1_000_000
    stack: list[Any] = [v for k, v in raw.items() if k not in _WEIGHT_KEYS]
    seen: set[int] = set()
    while stack and budget > 0 and reads > 0:
        obj = stack.pop()
        budget -= 1
        if isinstance(obj, (str, bytes, int, float, type(None))) or id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, TensorDescriptor):
            if obj.shape == () and obj.value is None and obj.storage is not None:
                reads -= 1
                obj.value = _read_scalar(obj, source)
        elif isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif isinstance(obj, Placeholder):
            stack.extend(obj.args)
            stack.extend(obj.kwargs.values())
            stack.append(obj.state)
            stack.extend(v for pair in obj.dict_items or () for v in pair)
            stack.extend(obj.list_items or ())


def _read_scalar(tensor: TensorDescriptor, source: _ScalarSource) -> Any:
    ref = tensor.storage
    size = ELEMENT_SIZE.get(tensor.dtype)
    if ref is None or size is None or ref.dtype not in ELEMENT_SIZE:
        return None
    start = ref.offset * ELEMENT_SIZE[ref.dtype] + tensor.storage_offset * size
    try:
        data = source.element(ref, start, size)
    except _ZIP_ERRORS:  # a damaged storage member only costs this value
        return None
    return decode_scalar(tensor.dtype, data, source.byteorder) if data is not None else None


def _summarize(contents: CheckpointContents) -> None:
    raw = contents.raw
    contents.epoch = _int(raw.get("epoch"))
    contents.global_step = _int(raw.get("global_step"))
    version = raw.get("pytorch-lightning_version")
    contents.lightning_version = version if isinstance(version, str) else None
    hparams = raw.get("hyper_parameters", raw.get("hparams"))
    if hparams is not None:
        plain = _convert(contents, "hyper_parameters", hparams)
        contents.hyper_parameters = plain if isinstance(plain, dict) else None
    if "cleval_metrics" in raw:
        plain = _convert(contents, "cleval_metrics", raw["cleval_metrics"])
        if isinstance(plain, dict):
            contents.cleval_metrics = {
                str(k): float(v) for k, v in plain.items() if _number(v) is not None
            }
    callbacks = raw.get("callbacks")
    if isinstance(callbacks, dict):
        for key, value in callbacks.items():
            try:
                state = _model_checkpoint(key, value)
            except ConversionLimit as exc:
                contents.warnings.append(f"callbacks[{str(key)[:80]!r}]: {exc}")
                continue
            if state is not None:
                contents.checkpoint_callbacks.append(state)


def _convert(contents: CheckpointContents, name: str, value: Any) -> Any:
    """``to_plain(value)``, or None with a warning when it is too large or deep to convert."""
    try:
        return to_plain(value)
    except ConversionLimit as exc:
        contents.warnings.append(f"{name}: {exc}")
        return None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # an int beyond float range
            return None
    return None


def _model_checkpoint(key: Any, state: Any) -> dict[str, Any] | None:
    """The fields of a ModelCheckpoint state, or None for other callbacks."""
    config: dict[str, Any] | None = None
    if isinstance(key, str):
        key_text = key
        match = _STATE_KEY.match(key)
        cls_name = match["cls"] if match else key
        if match and len(key) <= 10_000:
            try:
                parsed = ast.literal_eval(match["kwargs"])
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                parsed = None
            config = parsed if isinstance(parsed, dict) else None
    elif isinstance(key, type) and issubclass(key, Placeholder):  # Lightning < 1.5 keyed by class
        key_text = global_name(key) or ""
        cls_name = key.name
    else:
        return None
    if not isinstance(state, dict):
        return None
    if not (cls_name.endswith("ModelCheckpoint") or "best_model_path" in state or "best_k_models" in state):
        return None
    plain = to_plain(state)
    config = config or {}
    mode = config.get("mode", plain.get("mode"))
    if mode is None and (found := _MODE_IN_KEY.search(key_text)):
        mode = found[1]
    best_k = plain.get("best_k_models")
    return {
        "state_key": key_text,
        "monitor": config.get("monitor", plain.get("monitor")),
        "mode": mode,
        "current_score": _number(plain.get("current_score")),
        "best_model_score": _number(plain.get("best_model_score")),
        "best_model_path": plain.get("best_model_path"),
        "best_k_models": {str(k): _number(v) for k, v in best_k.items()} if isinstance(best_k, dict) else {},
        "kth_best_model_path": plain.get("kth_best_model_path"),
        "last_model_path": plain.get("last_model_path"),
        "dirpath": plain.get("dirpath"),
        "config": config,
    }
