"""PostgreSQL login roles for tests of ``ckpt-index sql``'s role check (the local server trusts
every role from 127.0.0.1, so a role needs no password)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url


def schema_of(url: str) -> str:
    """The schema a test URL's ``options=-csearch_path=...`` points at."""
    options = make_url(url).query["options"]
    return options.split("search_path=", 1)[1]


def as_role(url: str, role: str) -> str:
    return make_url(url).set(username=role).render_as_string(hide_password=False)


@contextmanager
def login_role(admin: Engine, url: str, *grants: str) -> Iterator[str]:
    """A fresh LOGIN role given ``grants`` (``{schema}`` is the test schema); yields its URL.

    Without grants it can use the schema and SELECT its tables (now and later ones): a
    read-only role as the README advises.
    """
    role = f"ckpt_role_{uuid.uuid4().hex[:10]}"
    schema = schema_of(url)
    grants = grants or (
        'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"',
        'GRANT SELECT ON ALL TABLES IN SCHEMA "{schema}" TO "{role}"',
        'ALTER DEFAULT PRIVILEGES IN SCHEMA "{schema}" GRANT SELECT ON TABLES TO "{role}"',
    )
    with admin.connect() as conn:
        conn.execute(text(f'CREATE ROLE "{role}" LOGIN'))
        for grant in grants:
            for statement in grant.split(";"):
                conn.execute(text(statement.format(schema=schema, role=role)))
    try:
        yield as_role(url, role)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP OWNED BY "{role}"'))
            conn.execute(text(f'DROP ROLE "{role}"'))
