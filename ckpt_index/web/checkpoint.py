"""The Checkpoint page: every field, metric and parameter of one indexed checkpoint.

The checkpoint is named by its indexed path, exactly (``/checkpoint?path=...``); the page shows
what the index holds (the sidecar's text comes from the row's ``metadata_json``): the server
reads no file from disk. ``/api/checkpoint?path=...`` answers ``show --format json``'s record
plus where each parameter and inferred value came from.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import Connection, select

from ckpt_index.index.tables import checkpoints, param_values
from ckpt_index.query.spec import find_checkpoint

#: A path longer than this names no checkpoint (a bound on the request's work).
MAX_PATH = 4096


class CheckpointNotFound(LookupError):
    """The index has no row for this path (a 404 answer)."""


def checkpoint_link(path: str, base: str = "/checkpoint") -> str:
    """The URL of a checkpoint's page."""
    return base + "?" + urlencode([("path", path)])


def read_checkpoint(conn: Connection, path: str) -> dict[str, Any]:
    """The record of ``path`` (:func:`find_checkpoint`'s) with ``param_sources`` (``{name:
    {"source", "overridden", "value_type"}}``), ``inferred_fields`` (``{field: origin}``, ``{}``
    when none), ``ckpt_mtime_ns`` and ``sidecar_text`` (the indexed sidecar, pretty JSON, or
    None). Raises :class:`CheckpointNotFound`."""
    if not path or len(path) > MAX_PATH or "\x00" in path:
        raise CheckpointNotFound(path)
    record = find_checkpoint(conn, path)
    if record is None:
        raise CheckpointNotFound(path)
    c = checkpoints.c
    row = conn.execute(
        select(c.param_set_id, c.inferred_fields, c.ckpt_mtime_ns)
        .where(c.checkpoint_path == path, c.location == record["location"])
        .limit(1)
    ).first()
    sources: dict[str, dict[str, Any]] = {}
    inferred: Any = {}
    mtime_ns = None
    if row is not None:
        mtime_ns = row.ckpt_mtime_ns
        if row.inferred_fields:
            try:
                inferred = json.loads(row.inferred_fields)
            except ValueError:
                inferred = {"?": row.inferred_fields}
        if row.param_set_id is not None:
            p = param_values.c
            for name, source, overridden, value_type in conn.execute(
                select(p.name, p.source, p.overridden, p.value_type)
                .where(p.param_set_id == row.param_set_id)
                .order_by(p.name)
            ):
                sources[name] = {
                    "source": source,
                    "overridden": bool(overridden),
                    "value_type": value_type,
                }
    record["param_sources"] = sources
    record["inferred_fields"] = inferred
    record["ckpt_mtime_ns"] = mtime_ns
    metadata = record.get("metadata")
    record["sidecar_text"] = (
        json.dumps(metadata, indent=2, ensure_ascii=False) if metadata is not None else None
    )
    return record


def checkpoint_routes(reader: Any, templates: Any) -> list[Any]:
    """``/checkpoint`` (the page) and ``/api/checkpoint`` over ``reader``."""
    from datetime import datetime, timezone

    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from ckpt_index.index.engine import IndexError_
    from ckpt_index.index.records import OUTPUT_FIELDS
    from ckpt_index.web.experiment import experiment_link

    def answer(request: Request) -> tuple[dict[str, Any] | None, str | None, int]:
        path = request.query_params.get("path", "")
        if not path:
            return None, "name a checkpoint: /checkpoint?path=...", 400
        try:
            return reader.read(lambda conn: read_checkpoint(conn, path)), None, 200
        except CheckpointNotFound:
            return None, f"no checkpoint {path!r} in the index", 404
        except IndexError_ as exc:
            return None, str(exc), 503

    def page(request: Request) -> Response:
        record, error, status = answer(request)
        mtime = None
        inferred: list[tuple[str, str]] = []
        if record is not None:
            if record["ckpt_mtime_ns"]:
                mtime = datetime.fromtimestamp(record["ckpt_mtime_ns"] / 1e9, timezone.utc)
            found = record["inferred_fields"]
            if isinstance(found, dict):
                inferred = [(str(k), json.dumps(v, ensure_ascii=False)) for k, v in found.items()]
            elif isinstance(found, list):
                inferred = [(str(k), "inferred") for k in found]
        context = {
            "active": "checkpoint",
            "record": record,
            "error": error,
            "fields": [f for f in OUTPUT_FIELDS if f != "aliases"],
            "inferred": inferred,
            "mtime": mtime.strftime("%Y-%m-%d %H:%M:%S UTC") if mtime else None,
            "experiment_link": experiment_link,
            "api_link": checkpoint_link(record["checkpoint_path"], "/api/checkpoint")
            if record
            else None,
        }
        return templates.TemplateResponse(request, "checkpoint.html", context, status_code=status)

    def api(request: Request) -> Response:
        record, error, status = answer(request)
        if record is None:
            return JSONResponse({"error": error}, status_code=status)
        return JSONResponse(record)

    return [Route("/checkpoint", page), Route("/api/checkpoint", api)]


__all__ = [
    "CheckpointNotFound",
    "checkpoint_link",
    "checkpoint_routes",
    "read_checkpoint",
]
