"""Writing W&B transaction logs in wandb's datastore framing, for tests that need records wandb
itself would not write (damaged, huge, hostile) around real ones.

The framing is LevelDB's log format as wandb's datastore writes it: a 7-byte file header, 32 KiB
blocks, 7-byte chunk headers (CRC-32 of type byte and data, 16-bit length, type).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from pathlib import Path

BLOCK = 32768
HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def frame(payloads: Iterable[bytes]) -> bytes:
    """The bytes of a log holding ``payloads`` as records, split into chunks like wandb does."""
    out = bytearray(HEADER)
    for payload in payloads:
        first = True
        while True:
            left = BLOCK - len(out) % BLOCK
            if left < 7:
                out += b"\0" * left
                continue
            piece, payload = payload[: left - 7], payload[left - 7 :]
            kind = (FULL if not payload else FIRST) if first else (LAST if not payload else MIDDLE)
            crc = zlib.crc32(piece, zlib.crc32(bytes([kind])))
            out += struct.pack("<IHB", crc, len(piece), kind) + piece
            first = False
            if not payload:
                break
    return bytes(out)


def write_log(path: Path, payloads: Iterable[bytes]) -> Path:
    path.write_bytes(frame(payloads))
    return path


def record(**fields) -> bytes:
    """A serialised wandb ``Record``.

    ``record(config={"update": [{"key": "a", "value_json": "1"}]})``
    """
    from google.protobuf import json_format
    from wandb.proto import wandb_internal_pb2

    message = wandb_internal_pb2.Record()
    json_format.ParseDict(fields, message)
    return message.SerializeToString()
