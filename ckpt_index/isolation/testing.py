"""Tasks for the tests of the worker pool itself: sleep, allocate, log a warning, crash.

Run by name like any task, e.g. ``pool.map("ckpt_index.isolation.testing:sleep", [(0.1,)])``.
"""

from __future__ import annotations

import logging
import os
import sys
import time


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def allocate(megabytes: int) -> int:
    return len(bytearray(megabytes << 20))


def warn(message: str) -> None:
    logging.getLogger("ckpt_index.test").warning("%s", message)


def crash(signal_number: int) -> int:
    """Kill this worker with ``signal_number`` (0: return without crashing)."""
    if signal_number:
        os.kill(os.getpid(), signal_number)
        time.sleep(10)
    return signal_number


def loaded(names: list[str]) -> list[str]:
    """Which of the modules ``names`` this worker has imported."""
    return [name for name in names if name in sys.modules]
