"""The Compare page: 2-6 checkpoints side by side, the content of ``ckpt-index diff``.

Checkpoints are named by their indexed path, exactly (``/compare?path=A&path=B``): the server
never resolves a path on its own filesystem. The rows are :func:`ckpt_index.query.diff.compare`'s
(fields, ``metrics.X``, ``params.X``; only those that differ unless ``all=1``), so
``/api/compare`` answers what ``diff --format json`` prints for the same paths.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from ckpt_index.index.records import OUTPUT_FIELDS
from ckpt_index.query.diff import MISSING, Diff, NotIndexedError, compare
from ckpt_index.query.spec import find_checkpoint

#: How many checkpoints a page compares.
MIN_COMPARED, MAX_COMPARED = 2, 6
#: A path longer than this names no checkpoint (a bound on the request's work).
MAX_PATH = 4096


class CompareError(ValueError):
    """A request naming too few, too many or malformed checkpoints (a 400 answer)."""


@dataclass(frozen=True)
class CompareState:
    """The page's state, all in its URL: the paths (in order, each once) and ``all``."""

    paths: tuple[str, ...]
    every: bool


def parse_compare(items: Sequence[tuple[str, str]]) -> CompareState:
    """``path`` (repeated) and ``all`` from the query string; raises :class:`CompareError`."""
    paths = list(dict.fromkeys(v for k, v in items if k == "path" and v))
    flags = [v for k, v in items if k == "all"]
    every = bool(flags) and flags[-1].lower() in ("1", "true", "yes", "on")
    if any(len(p) > MAX_PATH or "\x00" in p for p in paths):
        raise CompareError(f"a path is longer than {MAX_PATH} characters or holds a NUL")
    if not MIN_COMPARED <= len(paths) <= MAX_COMPARED:
        raise CompareError(
            f"compare takes {MIN_COMPARED} to {MAX_COMPARED} different checkpoints "
            f"(path=...&path=...); {len(paths)} given"
        )
    return CompareState(tuple(paths), every)


def read_compare(conn: Connection, state: CompareState) -> Diff:
    """The diff of the checkpoints ``state`` names (their records as ``diff`` reads them).

    Raises :class:`NotIndexedError` for paths the index has no row for.
    """
    records, missing = [], []
    for path in state.paths:
        record = find_checkpoint(conn, path)
        if record is None:
            missing.append(path)
        else:
            records.append({k: record[k] for k in (*OUTPUT_FIELDS, "metrics", "params")})
    if missing:
        raise NotIndexedError(missing)
    return compare(records, every=state.every)


def cell_text(name: str, value: Any) -> str:
    """A compared value as the page shows it (the template escapes it): as ``diff``'s table
    does, but paths in full."""
    if value is MISSING:
        return "—"
    if value is None:
        return "null" if name.startswith("params.") else "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def compare_link(paths: Sequence[str], every: bool, base: str = "/compare") -> str:
    """The URL of the page comparing ``paths`` (``all=1`` when ``every``)."""
    from urllib.parse import urlencode

    items = [("path", p) for p in paths]
    if every:
        items.append(("all", "1"))
    return base + "?" + urlencode(items)


__all__ = [
    "MAX_COMPARED",
    "MIN_COMPARED",
    "CompareError",
    "CompareState",
    "NotIndexedError",
    "cell_text",
    "compare_link",
    "parse_compare",
    "read_compare",
]


def compare_routes(reader: Any, templates: Any) -> list[Any]:
    """``/compare`` (the page) and ``/api/compare`` (``diff --format json``'s object), over
    ``reader`` (:class:`~ckpt_index.web.reader.IndexReader`)."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from ckpt_index.index.engine import IndexError_

    def answer(request: Request) -> tuple[CompareState | None, Diff | None, str | None, int]:
        try:
            state = parse_compare(request.query_params.multi_items())
        except CompareError as exc:
            return None, None, str(exc), 400
        try:
            return state, reader.read(lambda conn: read_compare(conn, state)), None, 200
        except NotIndexedError as exc:
            return state, None, str(exc), 404
        except IndexError_ as exc:
            return state, None, str(exc), 503

    def page(request: Request) -> Response:
        state, diff, error, status = answer(request)
        rows = []
        if diff is not None:
            rows = [
                (
                    row.name,
                    row.differs,
                    [(cell_text(row.name, v), v is MISSING) for v in row.values],
                )
                for row in diff.rows
            ]
        context = {
            "active": "compare",
            "state": state,
            "diff": diff,
            "rows": rows,
            "error": error,
            "other_link": compare_link(state.paths, not state.every) if state else None,
            "api_link": compare_link(state.paths, state.every, "/api/compare") if state else None,
            "curves_link": (
                compare_link(state.paths, False, "/api/compare/curves") if state else None
            ),
            "metric": request.query_params.get("metric") or "",
            "max_compared": MAX_COMPARED,
        }
        return templates.TemplateResponse(request, "compare.html", context, status_code=status)

    def api(request: Request) -> Response:
        _, diff, error, status = answer(request)
        if diff is None:
            return JSONResponse({"error": error}, status_code=status)
        return JSONResponse(diff.as_json())

    def api_curves(request: Request) -> Response:
        from ckpt_index.web.curves import read_curves

        try:
            state = parse_compare(request.query_params.multi_items())
        except CompareError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        metric = request.query_params.get("metric") or None
        try:
            curves = reader.read(lambda conn: read_curves(conn, state, metric))
        except NotIndexedError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        except IndexError_ as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)
        return JSONResponse(curves.as_json())

    return [
        Route("/compare", page),
        Route("/api/compare", api),
        Route("/api/compare/curves", api_curves),
    ]
