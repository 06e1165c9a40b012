"""What the browser tests share: Debian's Chromium and the server started by ``ckpt-index serve``.

A test module calls :func:`require_browser` at import. The fixtures ``browser_type_launch_args``
(pytest-playwright's browser, launched from ``CHROMIUM``) and ``watched`` (dialogs and console
errors) are in ``tests/conftest.py``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"


def require_browser() -> None:
    """Skip the calling module without Chromium, except in CI (``CI=true``), where a missing
    browser fails the tests instead (nothing is ever downloaded)."""
    if not Path(CHROMIUM).exists() and os.environ.get("CI") != "true":
        pytest.skip(
            f"no browser at {CHROMIUM} (apt-get install -y chromium); required when CI=true",
            allow_module_level=True,
        )


@contextmanager
def serving(db_url: str, cwd: Path) -> Iterator[str]:
    """``ckpt-index serve`` on a free port over ``db_url``; yields the address it prints
    (``http://127.0.0.1:PORT/``), and stops the server afterwards."""
    process = subprocess.Popen(
        [sys.executable, "-m", "ckpt_index", "serve", "--db", db_url, "--port", "0"],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        address = re.search(r"at (http://127\.0\.0\.1:\d+/)", line)
        assert address, (line, process.stderr.read() if process.poll() is not None else "")
        yield address.group(1)
    finally:
        process.terminate()
        process.wait(timeout=30)


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and rows of an 8-bit RGB or RGBA PNG (Chromium's screenshots), decoded here
    (no imaging library): the rows are unfiltered, one ``bytes`` of ``width * channels`` each.
    Raises ``ValueError`` for anything that is not such a PNG."""
    import struct
    import zlib

    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG signature")
    pos, header, idat = 8, None, bytearray()
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    if header is None:
        raise ValueError("no IHDR chunk")
    width, height, depth, colour, _, _, interlace = header
    if depth != 8 or colour not in (2, 6) or interlace:
        raise ValueError(f"unsupported PNG: depth {depth}, colour type {colour}")
    channels = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(bytes(idat)), width * channels
    rows, previous = [], bytes(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        if kind == 2:  # Up, the commonest on flat pages: one pass
            line = bytearray((a + b) & 0xFF for a, b in zip(line, previous, strict=True))
            kind = 0
        for i in range(stride if kind else 0):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                corner = previous[i - channels] if i >= channels else 0
                guess = left + up - corner
                pa, pb, pc = abs(guess - left), abs(guess - up), abs(guess - corner)
                best = left if pa <= pb and pa <= pc else (up if pb <= pc else corner)
                line[i] = (line[i] + best) & 0xFF
        previous = bytes(line)
        rows.append(previous)
    return width, height, rows


def png_encode(width: int, rows: list[bytes], step: int = 8) -> bytes:
    """An 8-bit RGB/RGBA PNG of ``rows`` (as :func:`png_pixels` returns them), each channel
    rounded to a multiple of ``step`` (invisible at 8, and a third smaller: anti-aliased text has
    thousands of shades) and each row filtered the way that compresses best, at zlib level 9.
    How the suite keeps the README's screenshots small without an imaging library."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    channels = len(rows[0]) // width
    levels = bytes(min(255, (b + step // 2) // step * step) for b in range(256))
    out, previous = bytearray(), bytes(len(rows[0]))
    for row in rows:
        row = row.translate(levels)
        up = bytes((a - b) & 0xFF for a, b in zip(row, previous, strict=True))
        sub = row[:channels] + bytes(
            (a - b) & 0xFF for a, b in zip(row[channels:], row, strict=False)
        )
        kind, line = min(
            ((0, row), (1, sub), (2, up)),
            key=lambda c: sum(x if x < 128 else 256 - x for x in c[1]),
        )
        out.append(kind)
        out += line
        previous = row
    header = struct.pack(">IIBBBBB", width, len(rows), 8, 2 if channels == 3 else 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(out), 9))
        + chunk(b"IEND", b"")
    )
