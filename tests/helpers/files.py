"""File times for tests of the racy window (files modified within two seconds are read again)."""

from __future__ import annotations

import os
from pathlib import Path

HOUR_NS = 3600 * 10**9


def age(*paths: Path, by_ns: int = HOUR_NS) -> None:
    """Move mtimes of files (recursively under directories) out of the racy window."""
    for path in paths:
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        for f in files:
            st = f.stat()
            os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns - by_ns))


def set_mtime(path: Path, mtime_ns: int) -> None:
    os.utime(path, ns=(mtime_ns, mtime_ns))
