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
