"""Alembic environment.

:func:`ckpt_index.index.migrate.alembic_config` builds the Config in code and passes an open
connection, whose transaction the migrations run in; the command-line ``alembic`` (with an
alembic.ini) opens its own.
"""

from __future__ import annotations

import logging.config

from alembic import context
from sqlalchemy import Connection, create_engine

from ckpt_index.index.engine import disposing, resolve_db_url
from ckpt_index.index.tables import include_object
from ckpt_index.index.tables import metadata as target_metadata_

config = context.config

# Configure logging from alembic.ini only for the command-line `alembic`, and only when the host
# application has not configured logging itself.
if config.config_file_name is not None and not logging.getLogger().handlers:
    logging.config.fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = target_metadata_


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite cannot ALTER most things; batch mode copies the table.
        compare_type=True,
        include_object=include_object,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url") or resolve_db_url(None)
    with disposing(create_engine(url)) as engine, engine.begin() as conn:
        _run(conn)


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
