"""Read a Lightning ``.ckpt`` without running code from it and without reading its tensors (SPEC §8).

A checkpoint written by ``torch.save`` (torch >= 1.6) is a zip archive: ``<prefix>/data.pkl``, the
pickled checkpoint dict, beside one member per tensor storage. Only the pickle is read (plus
``<prefix>/byteorder``), with :class:`~ckpt_index.sources.checkpoint.unpickler.SafeUnpickler`: every global it names
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
from typing import TYPE_CHECKING, Any

from ckpt_index import safe_io
from ckpt_index.sources.checkpoint.unpickler import (
    ELEMENT_SIZE,
    WEIGHTS_ONLY_ALLOWED,
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

if TYPE_CHECKING:
    from ckpt_index.isolation.pool import Limits

__all__ = [
    "CheckpointContents",
    "CheckpointReadError",
    "Placeholder",
    "StorageRef",
    "TensorDescriptor",
    "check_integrity",
    "read_checkpoint",
    "read_checkpoint_isolated",
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
#: A compressed ``data.pkl`` (torch.save stores it uncompressed) that expands more than this many
#: times, to more than MIN_RATIO_CHECK_BYTES, is refused before it is decompressed: a few hundred
#: bytes of bzip2 become 256 MiB of opcodes.
MAX_COMPRESSION_RATIO = 1000
MIN_RATIO_CHECK_BYTES = 16 << 20
#: Counters such as epoch and global_step are refused outside [0, 2**63).
_MAX_COUNTER = (1 << 63) - 1
#: Top-level keys whose 0-d tensors (BatchNorm counters, optimizer steps) are left undecoded.
_WEIGHT_KEYS = frozenset({"state_dict", "optimizer_states", "lr_schedulers"})

#: What a format loader returns: the top-level dict, a reader of scalar bytes, the format name,
#: the globals its pickles name.
_Loaded = tuple[dict[Any, Any], "_ScalarSource | None", str, set[str]]

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
    #: Parts of the checkpoint that could not be converted (too deep, too large, out of range),
    #: one line each.
    warnings: list[str] = field(default_factory=list)
    #: The globals the pickle names that ``torch.load(weights_only=True)`` refuses by default,
    #: sorted ``module.name``: empty when the file loads with ``weights_only=True``, else what to
    #: pass to ``torch.serialization.add_safe_globals`` (or a reason to use ``weights_only=False``).
    unsafe_globals: list[str] = field(default_factory=list)

    @cached_property
    def state_dict_shapes(self) -> dict[str, tuple[int, ...]]:
        """Parameter and buffer name -> shape, from ``state_dict`` (or a bare saved state dict)."""
        state = self.raw.get("state_dict")
        if not isinstance(state, dict):
            bare = bool(self.raw) and all(
                isinstance(v, TensorDescriptor) for v in self.raw.values()
            )
            state = self.raw if bare else {}
        return {_text(k): v.shape for k, v in state.items() if isinstance(v, TensorDescriptor)}


def read_checkpoint(path: str | os.PathLike[str]) -> CheckpointContents:
    """Read the metadata of the checkpoint at ``path`` safely, in this process; see the module docstring.

    The reader bounds its own work, but for files you do not trust use
    :func:`ckpt_index.read_checkpoint` (or :func:`read_checkpoint_isolated`): it runs this in a
    worker process under a memory ceiling and a time budget, so a crash costs only the read.

    Raises:
        CheckpointReadError: the file is missing, empty, truncated, not a torch checkpoint, or its
            pickle is malformed.
    """
    path = Path(path)
    try:
        fd, _ = safe_io.open_fd(path, max_size=None)
    except safe_io.UnsafeFileError as exc:
        raise CheckpointReadError(path, exc.reason) from None
    with _CountingFile(fd, "rb", closefd=True) as file:
        try:
            raw, scalars, fmt, names = _load(file, path)
            try:
                _decode_scalars(raw, scalars)
            finally:
                if scalars is not None:
                    scalars.close()
            contents = CheckpointContents(
                path=path,
                raw=raw,
                bytes_read=0,
                format=fmt,
                unsafe_globals=sorted(names - WEIGHTS_ONLY_ALLOWED),
            )
            _summarize(contents)
        except CheckpointReadError:
            raise
        except _TooLarge as exc:
            raise CheckpointReadError(path, str(exc)) from None
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # a seek to a negative offset read from a damaged header
                raise CheckpointReadError(
                    path, "corrupt file: an offset in it points outside it"
                ) from None
            raise CheckpointReadError(path, f"read error: {exc.strerror or exc}") from None
        except MemoryError:
            raise CheckpointReadError(path, "out of memory while reading it") from None
        except Exception as exc:  # noqa: BLE001 - the contract: only CheckpointReadError escapes
            # A bug for the fuzzer to find (it refuses this reason), never a crash of the caller.
            reason = f"{_UNEXPECTED} {type(exc).__name__}: {_describe(exc)}"
            raise CheckpointReadError(path, reason) from None
        contents.bytes_read = file.bytes_read
    return contents


_UNEXPECTED = "unexpected error while reading:"


def read_checkpoint_isolated(
    path: str | os.PathLike[str], limits: Limits | None = None
) -> CheckpointContents:
    """:func:`read_checkpoint` in a worker process under ``limits`` (:mod:`ckpt_index.isolation.pool`).

    A file that crashes the reader or exceeds a limit raises :class:`CheckpointReadError` naming
    why. The contents come back as plain data: ``raw`` is what :func:`to_plain` makes of the
    pickle (placeholders as ``"<module.name>"`` text, tensors as their descriptions).
    """
    from ckpt_index.isolation.pool import run_isolated

    path = Path(path)
    outcome = run_isolated(
        "ckpt_index.sources.checkpoint.tasks:read_checkpoint_task", [str(path)], limits
    )
    if not outcome.ok:
        raise CheckpointReadError(path, outcome.reason or "reader failed")
    if outcome.value[0] == "error":
        raise CheckpointReadError(path, outcome.value[1])
    _, fields, raw, shapes = outcome.value
    contents = CheckpointContents(path=path, raw=raw, **fields)
    contents.__dict__["state_dict_shapes"] = shapes  # the worker computed it from the descriptors
    return contents


# ---------------------------------------------------------------------------------------------
# Integrity without reading the file

_EOCD = struct.Struct("<4s4H2LH")  # zipfile's structEndArchive
_EOCD64_LOCATOR = struct.Struct("<4sLQL")
_EOCD64 = struct.Struct("<4sQ2H2L4Q")
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")  # zipfile's structCentralDir
_MAX_COMMENT = 0xFFFF
#: A central directory larger than this is not read (a checkpoint of 100k tensors has ~10 MiB).
MAX_CENTRAL_DIRECTORY_BYTES = MAX_READ_BYTES


def check_integrity(path: str | os.PathLike[str]) -> str | None:
    """None if the checkpoint at ``path`` looks whole, else a one-line reason.

    For a zip (torch >= 1.6) only its end is read: the end-of-central-directory records, the
    central directory (its size grows with the number of tensors, never with their bytes) and the
    local header of the last member. The directory must lie within the file, name exactly one
    ``<prefix>/data.pkl``, and every member's data must end before the directory starts. A
    truncated copy (Lightning #688) fails the first check. A legacy torch file passes if its magic
    number is there; anything else is "not a PyTorch checkpoint".
    """
    try:
        with safe_io.open_regular(path, max_size=None) as (handle, st):
            return _check_integrity(handle, st.st_size)
    except safe_io.UnsafeFileError as exc:
        return exc.reason
    except OSError as exc:
        return f"read error: {exc.strerror or exc}"
    except (ValueError, OverflowError, struct.error) as exc:  # numbers from a damaged directory
        return f"corrupt zip archive: {_describe(exc)}"


def _check_integrity(handle: io.FileIO, size: int) -> str | None:
    if size == 0:
        return "empty file"
    head = _pread(handle, 0, 512)
    tail_start = max(0, size - (_EOCD.size + _MAX_COMMENT))
    tail = _pread(handle, tail_start, size - tail_start)
    found = tail.rfind(b"PK\x05\x06")
    while found >= 0 and found + _EOCD.size > len(tail):
        found = tail.rfind(b"PK\x05\x06", 0, found)
    if found < 0:
        if head.startswith(b"PK"):
            return "truncated zip archive: no end of central directory record"
        if _is_legacy(head):
            return None
        return "not a PyTorch checkpoint: neither a zip archive nor the legacy torch format"
    eocd_at = tail_start + found
    (_, disk, _, _, entries, cd_size, cd_offset, _) = _EOCD.unpack_from(tail, found)
    cd_end_limit = eocd_at
    if eocd_at >= _EOCD64_LOCATOR.size:
        locator = _pread(handle, eocd_at - _EOCD64_LOCATOR.size, _EOCD64_LOCATOR.size)
        if locator[:4] == b"PK\x06\x07":
            # Right before its locator, as zipfile reads it (the locator's offset ignores any
            # bytes before the archive).
            eocd64_at = eocd_at - _EOCD64_LOCATOR.size - _EOCD64.size
            record = _pread(handle, eocd64_at, _EOCD64.size)
            if len(record) != _EOCD64.size or record[:4] != b"PK\x06\x06":
                return "corrupt zip archive: ZIP64 end record missing"
            _, _, _, _, disk, _, _, entries, cd_size, cd_offset = _EOCD64.unpack(record)
            cd_end_limit = eocd64_at
    if disk:
        return "unsupported zip archive: spans several disks"
    # Bytes before the archive (a zip appended to something) shift every offset, as zipfile allows.
    shift = cd_end_limit - cd_size - cd_offset
    if shift < 0:
        return (
            f"truncated zip archive: its central directory would end at byte {cd_offset + cd_size}, "
            f"the file has {size}"
        )
    if cd_size > MAX_CENTRAL_DIRECTORY_BYTES:
        return f"zip central directory of {cd_size} bytes, over the {MAX_CENTRAL_DIRECTORY_BYTES} byte limit"
    directory = _pread(handle, cd_offset + shift, cd_size)
    if len(directory) != cd_size:
        return "truncated zip archive: its central directory is cut short"
    pickles: list[str] = []
    last_name, last_offset, last_size = b"", -1, 0
    pos = count = 0
    while pos + _CENTRAL.size <= cd_size:
        fields = _CENTRAL.unpack_from(directory, pos)
        if fields[0] != b"PK\x01\x02":
            return f"corrupt zip archive: central directory entry {count} is damaged"
        name_len, extra_len, comment_len = fields[12], fields[13], fields[14]
        raw_name = directory[pos + _CENTRAL.size : pos + _CENTRAL.size + name_len]
        compress_size, offset = fields[10], fields[18]
        if compress_size == 0xFFFFFFFF or offset == 0xFFFFFFFF:
            extra = directory[
                pos + _CENTRAL.size + name_len : pos + _CENTRAL.size + name_len + extra_len
            ]
            compress_size, offset = _zip64_sizes(extra, fields[11], compress_size, offset)
        if offset + 30 + name_len + compress_size > cd_offset:
            name = _member_name(raw_name, fields[6])
            return f"truncated or corrupt zip archive: member {name[:80]} would end past the central directory"
        if raw_name.endswith(b"/data.pkl") and raw_name.count(b"/") == 1:
            pickles.append(_member_name(raw_name, fields[6]))
        if offset > last_offset:
            last_name, last_offset, last_size = raw_name, offset, compress_size
        pos += _CENTRAL.size + name_len + extra_len + comment_len
        count += 1
    if count != entries:
        return (
            f"corrupt zip archive: {count} central directory entries, its end record says {entries}"
        )
    if not pickles:
        return "zip archive has no <prefix>/data.pkl: not a torch.save checkpoint"
    if len(pickles) > 1:
        return f"zip archive has several data.pkl members: {', '.join(sorted(pickles)[:4])}"
    if last_offset >= 0:  # the local header's extra field (torch pads to 64 bytes) is only there
        last_name = _member_name(last_name, 0x800)
        header = _pread(handle, shift + last_offset, _LOCAL_HEADER.size)
        if len(header) != _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
            return f"corrupt zip archive: no local header for member {last_name[:80]}"
        fields = _LOCAL_HEADER.unpack(header)
        end = shift + last_offset + _LOCAL_HEADER.size + fields[10] + fields[11] + last_size
        if end > cd_offset + shift:
            return f"truncated or corrupt zip archive: member {last_name[:80]} ends past the central directory"
    return None


def _member_name(raw: bytes, flags: int) -> str:
    return raw.decode("utf-8" if flags & 0x800 else "cp437", "replace")


def _zip64_sizes(extra: bytes, file_size: int, compress_size: int, offset: int) -> tuple[int, int]:
    """Compressed size and header offset from a ZIP64 extra field, as zipfile reads them."""
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<2H", extra, pos)
        if tag == 1:
            values = list(
                struct.unpack_from(f"<{min(length, len(extra) - pos - 4) // 8}Q", extra, pos + 4)
            )
            if file_size == 0xFFFFFFFF and values:
                values.pop(0)
            if compress_size == 0xFFFFFFFF and values:
                compress_size = values.pop(0)
            if offset == 0xFFFFFFFF and values:
                offset = values.pop(0)
            break
        pos += 4 + length
    return compress_size, offset


def _pread(handle: io.FileIO, offset: int, size: int) -> bytes:
    if not 0 <= offset < 1 << 62 or size <= 0:  # offsets come from the file: anything goes
        return b""
    return os.pread(handle.fileno(), size, offset)


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
                raise _TooLarge(
                    f"refusing to read {size} bytes at once (a zip directory this large is corrupt)"
                )
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
            path, "unsupported legacy format: a tar archive (torch.save before PyTorch 0.4)"
        )
    if _is_legacy(head):
        return _load_legacy(file, path, size)
    try:  # a zip with leading bytes still has its directory at the end
        return _load_zip(file, path)
    except CheckpointReadError:
        pass
    raise CheckpointReadError(
        path, "not a PyTorch checkpoint: neither a zip archive nor the legacy torch format"
    )


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
    except (
        _ZIP_ERRORS
    ) as exc:  # names that are not UTF-8 raise ValueError, odd versions NotImplementedError
        raise CheckpointReadError(
            path, f"truncated or corrupt zip archive: {_describe(exc)}"
        ) from None
    try:
        raw, prefix, byteorder, names = _read_zip_pickle(archive, path)
    except BaseException:
        archive.close()
        raise
    return raw, _ZipScalars(archive, file, prefix, byteorder), "zip", names


def _read_zip_pickle(
    archive: zipfile.ZipFile, path: Path
) -> tuple[dict[Any, Any], str, str, set[str]]:
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if not pickles:
        raise CheckpointReadError(
            path, "zip archive has no <prefix>/data.pkl: not a torch.save checkpoint"
        )
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
            raise CheckpointReadError(
                path, f"{prefix}/byteorder is {order[:16]!r}, not little or big"
            )
        byteorder = order.decode()
    obj, unpickler, _ = _unpickle(data, path, name)
    return _top_level(obj, path, name), prefix, byteorder, unpickler.globals


#: What zipfile raises on damaged archives and members (zlib.error included).
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    EOFError,
    ValueError,
    NotImplementedError,
    RuntimeError,
    OverflowError,
    struct.error,
    zlib.error,
)


def _read_member(archive: zipfile.ZipFile, name: str, limit: int, path: Path) -> bytes:
    info = archive.getinfo(name)
    if info.file_size > limit or info.compress_size > limit:
        raise CheckpointReadError(
            path, f"{name} is {info.file_size} bytes, more than the {limit} byte limit"
        )
    if (
        info.compress_type != zipfile.ZIP_STORED
        and info.file_size > MIN_RATIO_CHECK_BYTES
        and info.file_size > MAX_COMPRESSION_RATIO * info.compress_size
    ):
        raise CheckpointReadError(
            path,
            f"{name} expands from {info.compress_size} to {info.file_size} bytes: a compression bomb",
        )
    try:
        with archive.open(info) as member:  # in chunks: each read of the file stays small
            chunks = list(iter(lambda: member.read(16 << 20), b""))
        data = b"".join(chunks)
    except (NotImplementedError, RuntimeError) as exc:  # unknown compression, encryption
        raise CheckpointReadError(
            path, f"cannot read zip member {name}: {_describe(exc)}"
        ) from None
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
    def __init__(
        self, archive: zipfile.ZipFile, file: _CountingFile, prefix: str, byteorder: str
    ) -> None:
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
            return self.small[ref.key][start : start + size]
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

    _, first = load("legacy magic number")
    version, second = load("legacy protocol version")
    if version != _LEGACY_PROTOCOL:
        raise CheckpointReadError(
            path, f"unsupported legacy torch format: protocol version {version!r}"
        )
    sys_info, third = load("legacy sys_info")
    obj, unpickler = load("legacy checkpoint pickle")
    keys, last = load("legacy storage keys")
    names = set().union(*(u.globals for u in (first, second, third, unpickler, last)))
    raw = _top_level(obj, path, "the legacy checkpoint pickle")
    little = not isinstance(sys_info, dict) or sys_info.get("little_endian", True)
    scalars = None
    if isinstance(keys, list) and all(isinstance(k, str) for k in keys):
        scalars = _LegacyScalars(
            file, position, keys, unpickler.storages, "little" if little else "big"
        )
        size = os.fstat(file.fileno()).st_size
        if scalars.end is not None and scalars.end > size:
            reason = f"truncated legacy torch file: its storages end at byte {scalars.end}, the file has {size}"
            raise CheckpointReadError(path, reason)
    return raw, scalars, "legacy", names


class _LegacyScalars(_ScalarSource):
    def __init__(
        self,
        file: _CountingFile,
        start: int,
        keys: list[str],
        storages: dict[str, StorageRef],
        byteorder: str,
    ) -> None:
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
    contents.epoch = _counter(contents, "epoch")
    contents.global_step = _counter(contents, "global_step")
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
                _text(k): float(v) for k, v in plain.items() if _number(v) is not None
            }
    callbacks = raw.get("callbacks")
    if isinstance(callbacks, dict):
        for key, value in callbacks.items():
            try:
                state = _model_checkpoint(key, value)
            except ConversionLimit as exc:
                contents.warnings.append(f"callbacks[{_text(key)[:80]!r}]: {exc}")
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


def _counter(contents: CheckpointContents, key: str) -> int | None:
    """``raw[key]`` if it is an int in [0, 2**63), else None (with a warning when it is an int)."""
    value = _int(contents.raw.get(key))
    if value is not None and not 0 <= value <= _MAX_COUNTER:
        text = str(value) if value.bit_length() < 200 else f"a {value.bit_length()}-bit integer"
        contents.warnings.append(f"{key}: {text} is outside the range of a counter")
        return None
    return value


def _text(value: Any) -> str:
    """``str(value)``, or a stand-in when it cannot print (str() refuses ints past 4300 digits)."""
    if isinstance(value, str):
        return value
    try:
        return str(value)
    except (ValueError, RecursionError):
        return f"<unprintable {type(value).__name__}>"


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
    if not (
        cls_name.endswith("ModelCheckpoint")
        or "best_model_path" in state
        or "best_k_models" in state
    ):
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
        "best_k_models": {_text(k): _number(v) for k, v in best_k.items()}
        if isinstance(best_k, dict)
        else {},
        "kth_best_model_path": plain.get("kth_best_model_path"),
        "last_model_path": plain.get("last_model_path"),
        "dirpath": plain.get("dirpath"),
        "config": config,
    }
