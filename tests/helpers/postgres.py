"""The PostgreSQL server the index tests run against, and URLs on schemas of their own."""

from __future__ import annotations

import os

#: The test server's database; the local server trusts every role from 127.0.0.1.
PG_ADMIN_URL = os.environ.get(
    "CKPT_INDEX_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def pg_url_with_schema(schema: str) -> str:
    """``PG_ADMIN_URL`` whose connections resolve unqualified names in ``schema``."""
    # libpq `options`: every connection of this URL sets search_path to `schema`.
    separator = "&" if "?" in PG_ADMIN_URL else "?"
    return f"{PG_ADMIN_URL}{separator}options=-csearch_path%3D{schema}"
