"""The ASGI app: routes, templates, static assets and the security headers.

Every route reads; none writes, and none serves a file named by the request: the static assets
are read from the package into memory when the app is made and served by name from that table.
Templates autoescape every value (paths, experiment and metric names come from files), and the
Content-Security-Policy allows scripts and styles from the app itself only (no inline script).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from importlib import resources
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from sqlalchemy import Connection
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ckpt_index import __version__
from ckpt_index.index.engine import IndexError_
from ckpt_index.query.columns import Column, select
from ckpt_index.query.spec import QuerySpec
from ckpt_index.query.table import human_size
from ckpt_index.vocabulary import GROUPABLE, PHASES
from ckpt_index.web.checkpoint import checkpoint_link, checkpoint_routes
from ckpt_index.web.checkpoints import (
    FACETS,
    USAGE_ERRORS,
    Counts,
    Page,
    PageState,
    count_matching,
    counts_key,
    parse_state,
    read_page,
)
from ckpt_index.web.compare import compare_routes
from ckpt_index.web.experiment import experiment_link, experiment_routes
from ckpt_index.web.health import health_routes
from ckpt_index.web.openapi import openapi_document
from ckpt_index.web.reader import IndexReader

#: On PostgreSQL (no cheap sign of a write) counts are remembered for this many seconds.
COUNTS_TTL_S = 2.0


#: Sent with every response. No inline script or style, no plugin, no framing, no form posting
#: elsewhere; the page loads only its own files.
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
}
_STATIC_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".txt": "text/plain; charset=utf-8",
}
#: Errors opening the index at request time (deleted, needing ``db upgrade``, from a newer
#: release, written during the read again and again).
_INDEX_ERRORS = (IndexError_,)


class SecurityHeaders:
    """Pure ASGI middleware adding :data:`SECURITY_HEADERS` to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                for name, value in SECURITY_HEADERS.items():
                    if name.encode() not in present:
                        headers.append((name.encode(), value.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _static_assets() -> dict[str, tuple[bytes, str]]:
    """The package's static files by name, read once (never a path from a request)."""
    assets: dict[str, tuple[bytes, str]] = {}
    static = resources.files("ckpt_index.web").joinpath("static")
    # static/vendor/: third-party files (uPlot, with its licence), served as vendor/NAME.
    for prefix, folder in (("", static), ("vendor/", static.joinpath("vendor"))):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            suffix = "." + entry.name.rpartition(".")[2]
            if entry.is_file() and suffix in _STATIC_TYPES:
                assets[prefix + entry.name] = (entry.read_bytes(), _STATIC_TYPES[suffix])
    return assets


def _cell(value: Any, column: Column) -> str:
    """A table cell as text (the template escapes it)."""
    if value is None:
        return ""
    if column.name == "ckpt_size" and isinstance(value, int):
        return human_size(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isfinite(value) and value != 0 and 1e-4 <= abs(value) < 1e6:
            return f"{value:.4f}".rstrip("0").rstrip(".") if value != int(value) else str(value)
        return f"{value:g}"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def _templates() -> Jinja2Templates:
    env = Environment(
        loader=PackageLoader("ckpt_index.web", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["cell"] = _cell
    env.globals.update(version=__version__, phases=PHASES, groupable=GROUPABLE)
    env.globals.update(checkpoint_link=checkpoint_link, experiment_link=experiment_link)
    env.filters["cell_size"] = lambda v: human_size(v) if isinstance(v, int) else ""
    return Jinja2Templates(env=env)


def create_app(
    db_url: str | None = None,
    *,
    allowed_hosts: list[str] | None = None,
    counts_ttl: float = COUNTS_TTL_S,
) -> Starlette:
    """The web app over the index at ``db_url`` (a path or SQLAlchemy URL; ``None``: the CLI's
    rule, ``$CKPT_INDEX_DB`` else ``./ckpt_index.db``), read-only.

    ``allowed_hosts`` limits the ``Host`` header a request may carry (the server on loopback
    allows its own names only, so that a web page cannot reach it through DNS rebinding).
    ``counts_ttl``: how long PostgreSQL's total and facet counts are reused (SQLite's until
    the index changes). The index is opened on the first request; :meth:`IndexReader.open` on
    ``app.state.reader`` checks it up front.
    """
    reader = IndexReader(db_url)
    templates = _templates()
    assets = _static_assets()
    counts = CountsCache(reader, counts_ttl)

    def render_checkpoints(request: Request) -> Response:
        error, page, status = None, None, 200
        try:
            state = parse_state(request.query_params.multi_items())
        except USAGE_ERRORS as exc:
            state, error, status = parse_state([]), str(exc), 400
        if error is None:
            try:
                page = reader.read(lambda conn: read_page(conn, state, counts=counts))
            except USAGE_ERRORS as exc:
                error, status = str(exc), 400
            except _INDEX_ERRORS as exc:
                error, status = str(exc), 503
        context = {
            "state": state,
            "page": page,
            "error": error,
            "facets": FACETS,
            "pages": _page_count(page, state),
            "now": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        }
        return templates.TemplateResponse(request, "checkpoints.html", context, status_code=status)

    def api_checkpoints(request: Request) -> Response:
        try:
            state = parse_state(request.query_params.multi_items())
            facets = request.query_params.get("facets", "1").lower() not in ("0", "false", "no")
            page = reader.read(lambda conn: read_page(conn, state, facets=facets, counts=counts))
        except USAGE_ERRORS as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except _INDEX_ERRORS as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)
        return JSONResponse(_page_json(page, state))

    def openapi(request: Request) -> Response:
        return JSONResponse(openapi_document(__version__))

    def static(request: Request) -> Response:
        found = assets.get(request.path_params["name"])
        if found is None:
            return Response("not found", status_code=404, media_type="text/plain")
        body, media_type = found
        return Response(body, media_type=media_type, headers={"cache-control": "max-age=300"})

    def home(request: Request) -> Response:
        return RedirectResponse("/checkpoints", status_code=307)

    routes = [
        Route("/", home),
        Route("/checkpoints", render_checkpoints),
        Route("/api/checkpoints", api_checkpoints),
        Route("/openapi.json", openapi),
        Route("/static/{name:path}", static),
        *compare_routes(reader, templates),
        *health_routes(reader, templates),
        *experiment_routes(reader, templates),
        *checkpoint_routes(reader, templates),
    ]
    middleware = [Middleware(SecurityHeaders)]
    if allowed_hosts is not None:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Compile every template before the first request (a page's first render would
        # otherwise spend ~100 ms parsing it): the server's first page is as fast as the next.
        for name in templates.env.list_templates():
            templates.env.get_template(name)
        yield
        reader.close()

    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.reader = reader
    return app


class CountsCache:
    """The total and facet counts of a query (a scan of the matching rows), remembered while the
    SQLite index is unchanged, and for ``ttl`` seconds on PostgreSQL (0: not at all); the page
    of records itself is always read."""

    def __init__(self, reader: IndexReader, ttl: float = COUNTS_TTL_S, size: int = 64) -> None:
        self._reader, self._ttl, self._size = reader, ttl, size
        self._lock = threading.Lock()
        self._answers: dict[Any, Counts] = {}

    def __call__(self, conn: Connection, spec: QuerySpec, facets: bool) -> Counts:
        token = self._reader.token()
        if token is None and self._ttl > 0:
            token = ("ttl", int(time.monotonic() // self._ttl))
        if token is None:
            return count_matching(conn, spec, facets)
        key = (token, counts_key(spec, facets))
        with self._lock:
            found = self._answers.get(key)
        if found is not None:
            return found
        answer = count_matching(conn, spec, facets)
        with self._lock:
            if len(self._answers) >= self._size:
                self._answers.clear()
            self._answers[key] = answer
        return answer


def _page_count(page: Page | None, state: PageState) -> int:
    if page is None:
        return 0
    return max(1, -(-page.total // state.per_page))


def _page_json(page: Page, state: PageState) -> dict[str, Any]:
    records = page.records
    if page.picked is not None:
        records = [select(r, page.picked) for r in records]
    return {
        "total": page.total,
        "page": state.page,
        "per_page": state.per_page,
        "offset": state.offset,
        "checkpoints": records,
        "facets": {
            facet: [{"value": value, "count": count} for value, count in values]
            for facet, values in page.facets.items()
        },
    }
