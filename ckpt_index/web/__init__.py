"""``ckpt-index serve``: a read-only web app over the index (Starlette, Jinja2; the ``web`` extra).

:func:`create_app` builds the ASGI app for one index; :mod:`.reader` opens the index read-only
(never creating, migrating or writing it); :mod:`.checkpoints` turns a page's URL query string
into a :class:`~ckpt_index.query.spec.QuerySpec` and reads one page of results with its facets;
:mod:`.openapi` describes the JSON routes. Nothing here is imported by the CLI until ``serve``
runs.
"""

from __future__ import annotations

from ckpt_index.web.app import create_app

__all__ = ["create_app"]
