"""The PostgreSQL server the index tests run against, and URLs on schemas of their own."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: The test server's database; the local server trusts every role from 127.0.0.1.
PG_ADMIN_URL = os.environ.get(
    "CKPT_INDEX_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def pg_url_with_schema(schema: str) -> str:
    """``PG_ADMIN_URL`` whose connections resolve unqualified names in ``schema``."""
    # libpq `options`: every connection of this URL sets search_path to `schema`.
    separator = "&" if "?" in PG_ADMIN_URL else "?"
    return f"{PG_ADMIN_URL}{separator}options=-csearch_path%3D{schema}"


@contextmanager
def schema_url(admin_engine: Any) -> Iterator[str]:
    """A URL on a fresh schema of its own, dropped on leaving: runs never meet."""
    from sqlalchemy import text

    schema = f"ckpt_test_{uuid.uuid4().hex[:12]}"
    with admin_engine.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield pg_url_with_schema(schema)
    finally:
        with admin_engine.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
