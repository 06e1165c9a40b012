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

from sqlalchemy import Connection, func, select
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
    report: dict[str, Any] = {"counts": {}}
    for key, (condition, path, reason) in queries.items():
        report["counts"][key] = conn.scalar(select(func.count()).where(condition))
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


__all__ = ["MAX_LISTED", "SECTIONS", "read_health", "read_version"]


def health_routes(reader: Any, templates: Any) -> list[Any]:
    """``/health`` and ``/api/health`` (the report), and ``/api/version`` (the fingerprint live
    pages poll; an ``ETag`` on it, so an unchanged index answers 304 with no body). On SQLite the
    fingerprint is read again only when the index file or its ``-wal`` changed."""
    import threading

    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from ckpt_index.index.engine import IndexError_

    remembered: dict[str, Any] = {}
    lock = threading.Lock()

    def page(request: Request) -> Response:
        error, report, status = None, None, 200
        try:
            report = reader.read(read_health)
        except IndexError_ as exc:
            error, status = str(exc), 503
        context = {"active": "health", "report": report, "error": error, "sections": SECTIONS}
        return templates.TemplateResponse(request, "health.html", context, status_code=status)

    def api(request: Request) -> Response:
        try:
            return JSONResponse(reader.read(read_health))
        except IndexError_ as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)

    def version(request: Request) -> Response:
        token = reader.token()
        with lock:
            found = remembered.get("answer") if token is not None else None
            if found is not None and remembered.get("token") != token:
                found = None
        if found is None:
            try:
                found = reader.read(read_version)
            except IndexError_ as exc:
                return JSONResponse({"error": str(exc)}, status_code=503)
            if token is not None:
                with lock:
                    remembered.update(token=token, answer=found)
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
