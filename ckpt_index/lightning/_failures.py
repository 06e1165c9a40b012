"""One warning per run for metadata failures; repeats go to DEBUG, so a broken index cannot flood
the logs."""

from __future__ import annotations

import logging
import threading


class FailureLog:
    """Counts failures; the first is a warning, later ones are debug messages (thread-safe)."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._lock = threading.Lock()
        self.count = 0

    def report(self, message: str, exc: BaseException | None = None) -> None:
        with self._lock:
            self.count += 1
            first = self.count == 1
        detail = f": {type(exc).__name__}: {exc}" if exc is not None else ""
        detail = " ".join(detail.split())  # SQLAlchemy errors span several lines
        if first:
            self._logger.warning(
                "ckpt-index: %s%s (training continues; further metadata failures in this run are "
                "logged at DEBUG level)",
                message,
                detail,
            )
        else:
            self._logger.debug("ckpt-index: %s%s", message, detail, exc_info=exc)

    def summary(self) -> None:
        """Tell how many failures the single warning stood for, once the run is over."""
        if self.count > 1:
            self._logger.info(
                "ckpt-index: %d metadata operations failed in this run; sidecars that were "
                "written are the source of truth, run `ckpt-index sync` to bring the index in line",
                self.count,
            )
