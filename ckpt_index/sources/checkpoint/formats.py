"""Loading a checkpoint's pickle: the zip format (torch >= 1.6) and the legacy one (torch < 1.6).

Only the pickle is read (plus ``<prefix>/byteorder``), with
:class:`~ckpt_index.sources.checkpoint.unpickler.SafeUnpickler` after the opcode pre-pass of
:func:`~ckpt_index.sources.checkpoint.scan.scan_pickle`; a :class:`ScalarSource` reads the few
bytes of single tensor elements afterwards. Every truncated or corrupt file raises
:class:`CheckpointReadError` with a one-line reason.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any, Literal

from ckpt_index.sources.checkpoint.integrity import (
    LOCAL_HEADER,
    MAX_READ_BYTES,
    describe,
    is_legacy,
)
from ckpt_index.sources.checkpoint.objects import ELEMENT_SIZE, StorageRef, global_name
from ckpt_index.sources.checkpoint.scan import scan_pickle
from ckpt_index.sources.checkpoint.unpickler import SafeUnpickler


class CheckpointReadError(Exception):
    """A checkpoint that cannot be read; ``reason`` is one line."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = " ".join(str(reason).split())
        super().__init__(f"{self.path}: {self.reason}")


#: A Lightning checkpoint's pickle is kilobytes to a few megabytes; refuse to read more than this.
MAX_PICKLE_BYTES = 256 << 20


#: Tensor storages up to this size are read whole to decode a 0-d tensor in them.
MAX_SCALAR_STORAGE_BYTES = 64


#: A compressed ``data.pkl`` (torch.save stores it uncompressed) that expands more than this many
#: times, to more than MIN_RATIO_CHECK_BYTES, is refused before it is decompressed: a few hundred
#: bytes of bzip2 become 256 MiB of opcodes.
MAX_COMPRESSION_RATIO = 1000


MIN_RATIO_CHECK_BYTES = 16 << 20


#: What a format loader returns: the top-level dict, a reader of scalar bytes, the format name,
#: the globals its pickles name.
Loaded = tuple[dict[Any, Any], "ScalarSource | None", str, set[str]]


_LEGACY_PROTOCOL = 1001


class TooLarge(Exception):
    pass


class CountingFile(io.FileIO):
    """Unbuffered, so ``bytes_read`` is what really came from the file; refuses huge single
    reads."""

    bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0 or size > MAX_READ_BYTES:
            remaining = max(0, os.fstat(self.fileno()).st_size - self.tell())
            size = remaining if size is None or size < 0 else min(size, remaining)
            if size > MAX_READ_BYTES:
                raise TooLarge(
                    f"refusing to read {size} bytes at once (a zip directory this large is corrupt)"
                )
        data = super().read(size)
        self.bytes_read += len(data)
        return data


def load(file: CountingFile, path: Path) -> Loaded:
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
    if is_legacy(head):
        return _load_legacy(file, path, size)
    try:  # a zip with leading bytes still has its directory at the end
        return _load_zip(file, path)
    except CheckpointReadError:
        pass
    raise CheckpointReadError(
        path, "not a PyTorch checkpoint: neither a zip archive nor the legacy torch format"
    )


def _unpickle(data: bytes, path: Path, what: str, start: int = 0) -> tuple[Any, SafeUnpickler, int]:
    """The object pickled at ``data[start:]``, the unpickler (for its storages) and where it
    ends."""
    try:
        end = scan_pickle(data, start)
        stream = io.BytesIO(data)
        stream.seek(start)
        unpickler = SafeUnpickler(stream)
        return unpickler.load(), unpickler, end
    except Exception as exc:  # the C unpickler raises many types on malformed input
        raise CheckpointReadError(path, f"{what} is not a valid pickle: {describe(exc)}") from None


def _top_level(obj: Any, path: Path, what: str) -> dict[Any, Any]:
    if not isinstance(obj, dict):
        kind = global_name(obj) or type(obj).__name__
        raise CheckpointReadError(path, f"{what} holds a {kind}, not a checkpoint dict")
    return obj


def _load_zip(file: CountingFile, path: Path) -> Loaded:
    try:
        archive = zipfile.ZipFile(file)
    except (
        ZIP_ERRORS
    ) as exc:  # names that are not UTF-8 raise ValueError, odd versions NotImplementedError
        raise CheckpointReadError(
            path, f"truncated or corrupt zip archive: {describe(exc)}"
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
ZIP_ERRORS = (
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
            f"{name} expands from {info.compress_size} to {info.file_size} bytes: "
            "a compression bomb",
        )
    try:
        with archive.open(info) as member:  # in chunks: each read of the file stays small
            chunks = list(iter(lambda: member.read(16 << 20), b""))
        data = b"".join(chunks)
    except (NotImplementedError, RuntimeError) as exc:  # unknown compression, encryption
        raise CheckpointReadError(path, f"cannot read zip member {name}: {describe(exc)}") from None
    except ZIP_ERRORS as exc:
        raise CheckpointReadError(path, f"corrupt zip member {name}: {describe(exc)}") from None
    if len(data) != info.file_size:
        raise CheckpointReadError(path, f"zip member {name} is truncated")
    return data


class ScalarSource:
    """Reads the bytes of single tensor elements."""

    byteorder = "little"

    def element(self, ref: StorageRef, start: int, size: int) -> bytes | None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _ZipScalars(ScalarSource):
    def __init__(
        self, archive: zipfile.ZipFile, file: CountingFile, prefix: str, byteorder: str
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
        header = self.file.read(LOCAL_HEADER.size)
        if len(header) != LOCAL_HEADER.size:
            return None
        fields = LOCAL_HEADER.unpack(header)
        if fields[0] != b"PK\x03\x04":  # zipfile.stringFileHeader
            return None
        self.file.seek(info.header_offset + LOCAL_HEADER.size + fields[10] + fields[11] + start)
        return self.file.read(size)


class _NeedMore(Exception):
    pass


def _load_legacy(file: CountingFile, path: Path, size: int) -> Loaded:
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


def _parse_legacy(buffer: bytes, file: CountingFile, path: Path) -> Loaded:
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
            reason = (
                f"truncated legacy torch file: its storages end at byte {scalars.end}, "
                f"the file has {size}"
            )
            raise CheckpointReadError(path, reason)
    return raw, scalars, "legacy", names


class _LegacyScalars(ScalarSource):
    def __init__(
        self,
        file: CountingFile,
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
        order: Literal["little", "big"] = "big" if self.byteorder == "big" else "little"
        if len(header) != 8 or int.from_bytes(header, order) != numel:
            return None
        self.file.seek(position + 8 + start)
        return self.file.read(size)
