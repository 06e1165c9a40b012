"""Run hostile-input code in a child Python and measure it: exit status, wall time, peak RSS.

The code runs in a grandchild under a small wrapper, so ``RUSAGE_CHILDREN`` of the wrapper is the
peak RSS of that one process, whatever other children the test process had before (the wandb
service, earlier cases). A hang is killed at ``timeout`` and reported as ``returncode None``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

#: Generous bounds for one hostile file: ordinary runs take well under a second and ~100 MB.
TIME_BOUND_S = 20.0
RSS_BOUND_MB = 600

_WRAPPER = r"""
import json, resource, subprocess, sys, time
started = time.monotonic()
try:
    proc = subprocess.run([sys.executable, "-c", sys.argv[1], *sys.argv[3:]], capture_output=True,
                          text=True, timeout=float(sys.argv[2]))
    rc, out, err = proc.returncode, proc.stdout, proc.stderr
except subprocess.TimeoutExpired as exc:
    rc, out, err = None, exc.stdout or "", "timed out"
    out = out.decode() if isinstance(out, bytes) else out
elapsed = time.monotonic() - started
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({"returncode": rc, "stdout": out, "stderr": err[-4000:], "seconds": elapsed,
                  "peak_mb": peak}))
"""


@dataclass
class ChildResult:
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    peak_mb: float

    def assert_bounded(self) -> None:
        """Exited normally, within the time and memory bounds."""
        assert self.returncode is not None, f"hung: killed after {self.seconds:.0f} s"
        assert self.returncode == 0, f"child died (exit {self.returncode}): {self.stderr}"
        assert self.seconds < TIME_BOUND_S, f"took {self.seconds:.1f} s"
        assert self.peak_mb < RSS_BOUND_MB, f"peak RSS {self.peak_mb:.0f} MB"


def run_child(code: str, *args: str, timeout: float = 60.0) -> ChildResult:
    """Run ``code`` (with ``args`` as ``sys.argv[1:]``) in a measured grandchild."""
    wrapper = subprocess.run(
        [sys.executable, "-c", _WRAPPER, code, str(timeout), *args],
        capture_output=True,
        text=True,
        timeout=timeout + 60,
    )
    assert wrapper.returncode == 0, wrapper.stderr
    return ChildResult(**json.loads(wrapper.stdout))
