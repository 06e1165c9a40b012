"""The Health page: what ``validate`` would report, as the index last saw it, and its statistics.

Everything comes from the index (the server never walks or reads the files on disk): rows whose
sidecar was rejected (``invalid``) or whose checkpoint cannot be loaded (``unreadable``) with
their reasons, orphaned sidecars (``checkpoint_exists`` false), stale sidecars (older than their
checkpoint), rows kept because their folder could not be listed (``scan_error``), checkpoints whose
pickle needs globals ``torch.load(weights_only=True)`` refuses, and :func:`index_stats`.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, case, func, select
from sqlalchemy.sql import ColumnElement

from ckpt_index.index.tables import checkpoints
from ckpt_index.query.stats import index_stats

#: Each list shows at most this many files (its count is always exact).
MAX_LISTED = 500

#: The sections of the report, in page order: (key, title, what the reason says).
SECTIONS = (
    ("invalid", "Invalid sidecars", "why the sidecar was rejected"),
    ("unreadable", "Unreadable checkpoints", "why the checkpoint cannot be loaded"),
    ("orphaned", "Orphaned sidecars", "the checkpoint beside the sidecar is gone"),
    ("stale", "Stale sidecars", "the checkpoint is newer than its sidecar"),
    ("scan_errors", "Folders that could not be listed", "the error at the last sync"),
    ("unsafe_globals", "Checkpoints needing unsafe globals", "globals weights_only refuses"),
)


def read_health(conn: Connection, limit: int = MAX_LISTED) -> dict[str, Any]:
    """``{"counts": {section: n}, section: [{"path", "checkpoint_path", "reason"}...],
    "stats": index_stats}``; each list in path order, at most ``limit`` long."""
    c = checkpoints.c
    orphan_reason = "the checkpoint beside this sidecar is gone"
    stale_reason = "the checkpoint is newer than its sidecar"
    queries: dict[str, tuple[ColumnElement[bool], ColumnElement[Any], ColumnElement[Any]]] = {
        "invalid": (
            c.status == "invalid",
            func.coalesce(c.sidecar_path, c.checkpoint_path),
            c.error,
        ),
        "unreadable": (c.status == "unreadable", c.checkpoint_path, c.error),
        "orphaned": (
            c.checkpoint_exists.is_(False),
            func.coalesce(c.sidecar_path, c.checkpoint_path),
            c.error,
        ),
        "stale": (c.stale.is_(True), func.coalesce(c.sidecar_path, c.checkpoint_path), c.error),
        "scan_errors": (c.scan_error.is_not(None), c.checkpoint_path, c.scan_error),
        "unsafe_globals": (
            c.unsafe_globals.is_not(None) & (c.unsafe_globals != "[]"),
            c.checkpoint_path,
            c.unsafe_globals,
        ),
    }
    # Every count in one pass over the table; a list is read only when its count is not 0.
    counted = conn.execute(
        select(
            *(
                func.coalesce(func.sum(case((condition, 1), else_=0)), 0).label(key)
                for key, (condition, _, _) in queries.items()
            )
        )
    ).one()
    report: dict[str, Any] = {"counts": {key: int(counted[i]) for i, key in enumerate(queries)}}
    for key, (condition, path, reason) in queries.items():
        if not report["counts"][key]:
            report[key] = []
            continue
        rows = conn.execute(
            select(path.label("path"), c.checkpoint_path, reason.label("reason"))
            .where(condition)
            .order_by(path, c.location)
            .limit(limit)
        )
        items = []
        for item_path, checkpoint_path, item_reason in rows:
            if key == "orphaned":
                item_reason = orphan_reason
            elif key == "stale":
                item_reason = stale_reason
            elif key == "unsafe_globals":
                item_reason = ", ".join(json.loads(item_reason))
            items.append(
                {"path": item_path, "checkpoint_path": checkpoint_path, "reason": item_reason}
            )
        report[key] = items
    report["stats"] = index_stats(conn)
    return report


def read_version(conn: Connection) -> dict[str, Any]:
    """The index's fingerprint for live pages: how many checkpoints, the highest row id and the
    latest ``indexed_at`` (one small aggregate). An upsert changes it (a new row: the count and
    id; a row updated in place: its ``indexed_at``), and so does a deletion."""
    c = checkpoints.c
    count, max_id, latest = conn.execute(
        select(func.count(), func.max(c.id), func.max(c.indexed_at))
    ).one()
    return {
        "version": f"{count}-{max_id or 0}-{latest or ''}",
        "checkpoints": count,
        "max_id": max_id,
        "indexed_at": latest,
    }


#: On PostgreSQL (no cheap sign of a write) the report and the fingerprint are reused this long.
HEALTH_TTL_S = 5.0
VERSION_TTL_S = 1.0


class _Remembered:
    """One answer, reused while the SQLite index is unchanged (its reader's token), or for
    ``ttl`` seconds on PostgreSQL, whoever asks (every open page polls)."""

    def __init__(self, reader: Any, ttl: float) -> None:
        import threading

        self._reader, self._ttl = reader, ttl
        self._lock = threading.Lock()
        self._key: Any = None
        self._answer: Any = None

    def get(self, compute: Any) -> Any:
        import time

        key = self._reader.token()
        if key is None:
            key = ("ttl", int(time.monotonic() // self._ttl)) if self._ttl > 0 else object()
        with self._lock:
            if self._key == key and self._answer is not None:
                return self._answer
        answer = self._reader.read(compute)
        with self._lock:
            self._key, self._answer = key, answer
        return answer


def health_routes(
    reader: Any,
    templates: Any,
    *,
    health_ttl: float = HEALTH_TTL_S,
    version_ttl: float = VERSION_TTL_S,
) -> list[Any]:
    """``/health`` and ``/api/health`` (the report), and ``/api/version`` (the fingerprint live
    pages poll; an ``ETag`` on it, so an unchanged index answers 304 with no body). On SQLite both
    are read again only when the index file or its ``-wal`` changed; on PostgreSQL they are reused
    for ``health_ttl`` and ``version_ttl`` seconds."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from ckpt_index.index.engine import IndexError_

    health = _Remembered(reader, health_ttl)
    fingerprint = _Remembered(reader, version_ttl)

    def page(request: Request) -> Response:
        error, report, status = None, None, 200
        try:
            report = health.get(read_health)
        except IndexError_ as exc:
            error, status = str(exc), 503
        context = {"active": "health", "report": report, "error": error, "sections": SECTIONS}
        return templates.TemplateResponse(request, "health.html", context, status_code=status)

    def api(request: Request) -> Response:
        try:
            return JSONResponse(health.get(read_health))
        except IndexError_ as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)

    def version(request: Request) -> Response:
        try:
            found = fingerprint.get(read_version)
        except IndexError_ as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)
        etag = '"' + found["version"].replace('"', "") + '"'
        headers = {"etag": etag, "cache-control": "no-cache"}
        if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
            return Response(status_code=304, headers=headers)
        return JSONResponse(found, headers=headers)

    return [
        Route("/health", page),
        Route("/api/health", api),
        Route("/api/version", version),
    ]


__all__ = ["MAX_LISTED", "SECTIONS", "health_routes", "read_health", "read_version"]
