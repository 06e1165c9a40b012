"""Whether a checkpoint file looks whole, without reading it (:func:`check_integrity`).

For a zip archive (torch >= 1.6) only its end is read: the end-of-central-directory records,
the central directory and the local header of the last member. A legacy torch file (torch < 1.6)
is recognised by the magic number its first pickle holds.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass

from ckpt_index import safe_io
from ckpt_index.sources.checkpoint.scan import scan_pickle
from ckpt_index.sources.checkpoint.unpickler import SafeUnpickler

#: No single read is larger (the zip directory of a checkpoint with 100k tensors is ~10 MiB).
MAX_READ_BYTES = 64 << 20

#: The first pickle of a legacy torch file holds this number.
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # zipfile's structFileHeader
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
        return f"corrupt zip archive: {describe(exc)}"


@dataclass
class _End:
    """What the end records of a zip archive say about its central directory."""

    disk: int
    entries: int
    cd_size: int
    cd_offset: int
    #: Where the directory must end: the (ZIP64) end record that follows it.
    cd_end_limit: int


@dataclass
class _Members:
    """What the central directory lists: the data.pkl members, and the member stored last."""

    count: int
    pickles: list[str]
    last_name: bytes
    last_offset: int
    last_size: int


def _check_integrity(handle: io.FileIO, size: int) -> str | None:
    if size == 0:
        return "empty file"
    end = _end_records(handle, size)
    if not isinstance(end, _End):
        return end  # a reason, or None for a legacy file
    if end.disk:
        return "unsupported zip archive: spans several disks"
    # Bytes before the archive (a zip appended to something) shift every offset, as zipfile allows.
    shift = end.cd_end_limit - end.cd_size - end.cd_offset
    if shift < 0:
        return (
            "truncated zip archive: its central directory would end at byte "
            f"{end.cd_offset + end.cd_size}, the file has {size}"
        )
    if end.cd_size > MAX_CENTRAL_DIRECTORY_BYTES:
        return (
            f"zip central directory of {end.cd_size} bytes, over the "
            f"{MAX_CENTRAL_DIRECTORY_BYTES} byte limit"
        )
    directory = pread(handle, end.cd_offset + shift, end.cd_size)
    if len(directory) != end.cd_size:
        return "truncated zip archive: its central directory is cut short"
    members = _members(directory, end.cd_offset)
    if not isinstance(members, _Members):
        return members
    if members.count != end.entries:
        return (
            f"corrupt zip archive: {members.count} central directory entries, its end record "
            f"says {end.entries}"
        )
    if not members.pickles:
        return "zip archive has no <prefix>/data.pkl: not a torch.save checkpoint"
    if len(members.pickles) > 1:
        return f"zip archive has several data.pkl members: {', '.join(sorted(members.pickles)[:4])}"
    return _last_member_problem(handle, members, shift, end.cd_offset)


def _end_records(handle: io.FileIO, size: int) -> _End | str | None:
    """The end records of a zip archive; else None for a legacy torch file, or a reason."""
    head = pread(handle, 0, 512)
    tail_start = max(0, size - (_EOCD.size + _MAX_COMMENT))
    tail = pread(handle, tail_start, size - tail_start)
    found = tail.rfind(b"PK\x05\x06")
    while found >= 0 and found + _EOCD.size > len(tail):
        found = tail.rfind(b"PK\x05\x06", 0, found)
    if found < 0:
        if head.startswith(b"PK"):
            return "truncated zip archive: no end of central directory record"
        if is_legacy(head):
            return None
        return "not a PyTorch checkpoint: neither a zip archive nor the legacy torch format"
    eocd_at = tail_start + found
    (_, disk, _, _, entries, cd_size, cd_offset, _) = _EOCD.unpack_from(tail, found)
    end = _End(disk, entries, cd_size, cd_offset, cd_end_limit=eocd_at)
    if eocd_at >= _EOCD64_LOCATOR.size:
        locator = pread(handle, eocd_at - _EOCD64_LOCATOR.size, _EOCD64_LOCATOR.size)
        if locator[:4] == b"PK\x06\x07":
            # Right before its locator, as zipfile reads it (the locator's offset ignores any
            # bytes before the archive).
            eocd64_at = eocd_at - _EOCD64_LOCATOR.size - _EOCD64.size
            record = pread(handle, eocd64_at, _EOCD64.size)
            if len(record) != _EOCD64.size or record[:4] != b"PK\x06\x06":
                return "corrupt zip archive: ZIP64 end record missing"
            _, _, _, _, disk, _, _, entries, cd_size, cd_offset = _EOCD64.unpack(record)
            end = _End(disk, entries, cd_size, cd_offset, cd_end_limit=eocd64_at)
    return end


def _members(directory: bytes, cd_offset: int) -> _Members | str:
    """The members the central directory lists, or why it is damaged."""
    members = _Members(count=0, pickles=[], last_name=b"", last_offset=-1, last_size=0)
    pos = 0
    while pos + _CENTRAL.size <= len(directory):
        fields = _CENTRAL.unpack_from(directory, pos)
        if fields[0] != b"PK\x01\x02":
            return f"corrupt zip archive: central directory entry {members.count} is damaged"
        name_len, extra_len, comment_len = fields[12], fields[13], fields[14]
        name_at = pos + _CENTRAL.size
        raw_name = directory[name_at : name_at + name_len]
        compress_size, offset = fields[10], fields[18]
        if compress_size == 0xFFFFFFFF or offset == 0xFFFFFFFF:
            extra = directory[name_at + name_len : name_at + name_len + extra_len]
            compress_size, offset = _zip64_sizes(extra, fields[11], compress_size, offset)
        if offset + 30 + name_len + compress_size > cd_offset:
            name = _member_name(raw_name, fields[6])
            return (
                f"truncated or corrupt zip archive: member {name[:80]} would end past the "
                "central directory"
            )
        if raw_name.endswith(b"/data.pkl") and raw_name.count(b"/") == 1:
            members.pickles.append(_member_name(raw_name, fields[6]))
        if offset > members.last_offset:
            members.last_name, members.last_offset = raw_name, offset
            members.last_size = compress_size
        pos = name_at + name_len + extra_len + comment_len
        members.count += 1
    return members


def _last_member_problem(
    handle: io.FileIO, members: _Members, shift: int, cd_offset: int
) -> str | None:
    """Why the member stored last does not end before the directory, if it does not.

    Its local header's extra field (torch pads to 64 bytes) is only known from that header.
    """
    if members.last_offset < 0:
        return None
    last_name = _member_name(members.last_name, 0x800)
    header = pread(handle, shift + members.last_offset, LOCAL_HEADER.size)
    if len(header) != LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
        return f"corrupt zip archive: no local header for member {last_name[:80]}"
    fields = LOCAL_HEADER.unpack(header)
    end = shift + members.last_offset + LOCAL_HEADER.size + fields[10] + fields[11]
    if end + members.last_size > cd_offset + shift:
        return (
            f"truncated or corrupt zip archive: member {last_name[:80]} ends past the central "
            "directory"
        )
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


def pread(handle: io.FileIO, offset: int, size: int) -> bytes:
    if not 0 <= offset < 1 << 62 or size <= 0:  # offsets come from the file: anything goes
        return b""
    return os.pread(handle.fileno(), size, offset)


def describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    return text if len(text) <= 200 else text[:197] + "..."


def is_legacy(head: bytes) -> bool:
    try:
        scan_pickle(head)
        return SafeUnpickler(io.BytesIO(head)).load() == LEGACY_MAGIC
    except Exception:
        return False
