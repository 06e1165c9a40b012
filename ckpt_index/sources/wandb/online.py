"""A W&B run from the W&B API (``--wandb-online``), bounded by a timeout and cached by the caller.

:func:`fetch_online` remembers answers in an :class:`AnswerCache` the caller hands it; sources
never open the index themselves (the sync builds one on the index's ``wandb_run_cache`` table:
:class:`ckpt_index.index.store.WandbApiCache`). A cache entry is a mapping of the table's
columns: ``fetched_at`` (ISO 8601 text, UTC), ``ok``, ``error``, and ``config_json``,
``summary_json``, ``history_json`` (JSON text; the history maps a step, as text, to its metrics).

wandb is imported only inside the fetching thread; importing this module stays cheap.
"""

from __future__ import annotations

import json
import math
import netrc
import os
import threading
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, Protocol
from urllib.parse import urlparse

from ckpt_index.sources.wandb.run import (
    HistoryIndex,
    WandbRun,
    logger,
    user_config,
    uses_lightning_steps,
    warn_once,
)

#: A cached failure (run not found, no access) is retried after this long.
RETRY_FAILED_AFTER_S = 24 * 3600
#: A cached answer that ends before the step asked for (the run was still going) is refetched,
#: at most this often.
REFRESH_AFTER_S = 600

# Set after the first fetch that found no credentials or no network: later fetches skip at once.
_online_unavailable: str | None = None

_NETWORK_WORDS = (
    "connection",
    "timed out",
    "timeout",
    "name or service",
    "name resolution",
    "failed to resolve",
    "unreachable",
    "authentication",
    "credentials",
    "api key",
    "did not respond",
    "max retries",
)


class AnswerCache(Protocol):
    """Where :func:`fetch_online` remembers the API's answers, one entry per run path.

    Entries are mappings of ``fetched_at``, ``ok``, ``error``, ``config_json``, ``summary_json``
    and ``history_json`` (see the module docstring). ``put`` replaces the run's entry; a cache
    that cannot write (a read-only index) may drop it silently.
    """

    def get(self, run_path: str) -> Mapping[str, Any] | None: ...

    def put(self, run_path: str, entry: Mapping[str, Any]) -> None: ...


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        path = os.environ.get("NETRC") or None
        return host is not None and netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _entry(run: WandbRun | None, error: str | None, raw_config: Any = None) -> dict[str, Any]:
    """The cache entry of an answer (``run``) or of a run-specific failure (``error``)."""
    entry: dict[str, Any] = {"fetched_at": _now().isoformat(), "ok": run is not None}
    entry.update(error=error, config_json=None, summary_json=None, history_json=None)
    if run is not None:
        config = raw_config if raw_config is not None else run.config
        entry.update(
            config_json=json.dumps(config, default=str),
            summary_json=json.dumps(run.summary, default=str),
            history_json=json.dumps({str(k): v for k, v in run.history.items()}),
        )
    return entry


def _run_from_api_data(
    run_path: str, raw_config: dict, summary: dict, history: dict, source: str
) -> WandbRun:
    parts = run_path.split("/")
    raw_config = raw_config or {}
    internal = raw_config.get("_wandb") if isinstance(raw_config, dict) else None
    return WandbRun(
        run_id=parts[-1],
        project=parts[-2] if len(parts) >= 2 else None,
        entity=parts[-3] if len(parts) >= 3 else None,
        config=user_config(raw_config),
        summary={k: v for k, v in (summary or {}).items() if k != "_wandb"},
        lightning_steps=isinstance(internal, dict) and uses_lightning_steps(internal.get("m")),
        source=source,
        history=history,
    )


def _from_cache(entry: Mapping[str, Any], run_path: str) -> WandbRun | None:
    try:
        history = {int(k): v for k, v in json.loads(entry["history_json"] or "{}").items()}
        config = json.loads(entry["config_json"] or "{}")
        summary = json.loads(entry["summary_json"] or "{}")
        return _run_from_api_data(run_path, config, summary, history, "cache")
    except (ValueError, TypeError, AttributeError, KeyError, RecursionError) as exc:
        logger.debug("ignoring a damaged cache entry for %s: %s", run_path, exc)
        return None


def _age_s(entry: Mapping[str, Any]) -> float:
    try:
        return (_now() - datetime.fromisoformat(entry["fetched_at"])).total_seconds()
    except (TypeError, ValueError, KeyError):
        return math.inf


def _cached(
    entry: Mapping[str, Any] | None, run_path: str, global_step: int | None
) -> tuple[bool, WandbRun | None]:
    """(whether the cache settles the question, the cached run).

    When it does not settle it, the run (if any) is a stale answer worth refreshing and the
    fallback should the refresh fail: one whose history ends before ``global_step`` (the run was
    still going) and older than :data:`REFRESH_AFTER_S`. A cached failure settles it (as None)
    for :data:`RETRY_FAILED_AFTER_S`.
    """
    if entry is None:
        return False, None
    cached = _from_cache(entry, run_path) if entry.get("ok") else None
    if cached is None:
        return not entry.get("ok") and _age_s(entry) < RETRY_FAILED_AFTER_S, None
    needed = None if global_step is None else int(global_step) - int(cached.lightning_steps)
    ends_early = needed is not None and max(cached.history, default=-1) < needed
    return not ends_early or _age_s(entry) < REFRESH_AFTER_S, cached


class _Fetch:
    """State shared with the fetching thread; ``progress`` is the monotonic time of its last
    step."""

    def __init__(self) -> None:
        self.progress = time.monotonic()
        self.result: tuple[dict, dict, dict[int, dict[str, float]]] | None = None
        self.error: BaseException | None = None


def _fetch_remote(run_path: str, timeout: float, state: _Fetch) -> None:
    try:
        import wandb

        # wandb annotates the timeout as int; it hands it to requests, which takes any number.
        api = wandb.Api(timeout=timeout)  # type: ignore[arg-type]
        state.progress = time.monotonic()
        remote = api.run(run_path)
        raw_config = dict(remote.rawconfig or remote.config or {})
        summary = dict(remote.summary_metrics or {})
        state.progress = time.monotonic()
        history = HistoryIndex()
        for i, row in enumerate(remote.scan_history()):
            history.add(row)
            if i % 100 == 0:
                state.progress = time.monotonic()
        state.result = (raw_config, summary, history.result())
    except BaseException as exc:  # handed to the caller's thread
        state.error = exc


def _fetch_in_thread(run_path: str, timeout: float) -> _Fetch | None:
    """The finished fetch, or None when it made no progress for ``timeout`` seconds (the daemon
    thread is abandoned)."""
    state = _Fetch()
    worker = threading.Thread(
        target=_fetch_remote,
        args=(run_path, timeout, state),
        name="ckpt-index-wandb-fetch",
        daemon=True,
    )
    worker.start()
    while worker.is_alive() and time.monotonic() - state.progress < timeout:
        worker.join(min(0.05, timeout))
    return None if worker.is_alive() else state


def _is_network_error(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return any(word in text for word in _NETWORK_WORDS)


def _give_up(reason: str) -> None:
    """Skip the network for the rest of the process, with one warning."""
    global _online_unavailable
    _online_unavailable = reason
    warn_once("online", "W&B online look-ups skipped: %s", reason)


def fetch_online(
    run_path: str | None,
    *,
    timeout: float = 10.0,
    cache: AnswerCache | None = None,
    global_step: int | None = None,
) -> WandbRun | None:
    """Config, summary and history of a run from the W&B API (``--wandb-online``), or None.

    The answer (or a run-specific failure such as "not found") is kept in ``cache`` when one is
    given and served from there afterwards; a cached failure is retried after a day, and a cached
    answer whose history ends before ``global_step`` (the run was still going) is refetched at
    most every ten minutes.

    Without an API key (``WANDB_API_KEY`` or netrc) or without network this returns None with
    one warning per process, and later calls skip the network at once. The fetch runs in a daemon
    thread: it is abandoned when it makes no progress for ``timeout`` seconds.

    Example::

        cache = WandbApiCache(open_engine())  # from ckpt_index.index.store
        run = fetch_online("team/ocr/abc12345", cache=cache, global_step=640)
    """
    if not run_path:
        return None
    settled, stale = _cached(
        cache.get(run_path) if cache is not None else None, run_path, global_step
    )
    if settled:
        return stale
    if _online_unavailable is None and not _has_api_key():
        _give_up("no W&B API key (set WANDB_API_KEY or run `wandb login`)")
    if _online_unavailable is not None:
        warn_once("online", "W&B online look-ups skipped: %s", _online_unavailable)
        return stale
    state = _fetch_in_thread(run_path, timeout)
    if state is None:
        _give_up(f"no answer from the W&B API within {timeout:g} s")
        return stale
    if state.error is not None or state.result is None:
        return _failed(run_path, state.error, cache, stale)
    raw_config, summary, history = state.result
    run = _run_from_api_data(run_path, raw_config, summary, history, "api")
    if cache is not None:
        cache.put(run_path, _entry(run, None, raw_config))
    return run


def _failed(
    run_path: str, error: BaseException | None, cache: AnswerCache | None, stale: WandbRun | None
) -> WandbRun | None:
    """After a failed fetch: skip the network from now on when it was the network's failure,
    else remember the run's failure (unless a stale answer still serves)."""
    message = f"{type(error).__name__}: {error}"
    if error is not None and _is_network_error(error):
        _give_up(message)
        return stale
    logger.warning("W&B run %s: %s", run_path, message)
    if cache is not None and stale is None:
        cache.put(run_path, _entry(None, message))
    return stale
